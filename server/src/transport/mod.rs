//! The kube transport: pod discovery, exec, tar streaming.
//! Knows nothing of LSP or of the engine's state.

pub mod agent;
pub mod client;
pub mod error;
pub mod exec;
pub mod ops;
pub mod payload;
pub mod pods;
pub mod remote;
pub mod session;
pub mod tarstream;

pub use client::{Connector, ContextClient, KubeOptions};
pub use error::TransportError;
pub use exec::ContainerRef;
pub use ops::DeliverOutcome;
pub use payload::{Upload, UploadEntry, UploadOp};
pub use pods::{PodMatch, PodQuery, ResolvedContainer};
pub use remote::RemoteFile;
pub use session::{SessionKey, SessionPool};
