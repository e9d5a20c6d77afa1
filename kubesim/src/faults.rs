//! Faults tests inject into kubesim's API: failed exec handshakes, cut exec streams, latency,
//! and denied permissions.
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CutMode {
    /// The TCP connection is reset: no WebSocket close frame, no exec status.
    TcpDrop,
    /// A WebSocket close frame (1000) is sent, without an exec status.
    CleanClose,
}

#[derive(Default, Debug)]
struct FaultState {
    failing_handshakes: u32,
    failing_status: u16,
    cut: Option<(u64, CutMode)>,
    latency: Duration,
    denied: BTreeSet<(String, String)>,
}

#[derive(Default, Debug)]
pub struct Faults {
    state: Mutex<FaultState>,
}

impl Faults {
    /// The next `n` exec requests are answered with `status` instead of the protocol upgrade.
    pub fn fail_next_exec_handshakes(&self, n: u32, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.failing_handshakes = n;
        s.failing_status = status;
    }

    /// The next exec's connection is cut once `stdin_bytes` bytes of stdin arrived; only
    /// those bytes reach the process, whose stdin is then closed as the kubelet would.
    pub fn cut_next_exec_after(&self, stdin_bytes: u64, mode: CutMode) {
        self.state.lock().unwrap().cut = Some((stdin_bytes, mode));
    }

    /// Delays every API request (not `/_sim/`) by `per_request`.
    pub fn set_latency(&self, per_request: Duration) {
        self.state.lock().unwrap().latency = per_request;
    }

    /// Denies `verb` on `resource` ("pods", "pods/exec", "pods/log"): 403, and a
    /// SelfSubjectAccessReview answers `allowed: false`.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.state
            .lock()
            .unwrap()
            .denied
            .insert((verb.to_string(), resource.to_string()));
    }

    pub fn clear(&self) {
        *self.state.lock().unwrap() = FaultState::default();
    }

    pub(crate) fn take_handshake_failure(&self) -> Option<u16> {
        let mut s = self.state.lock().unwrap();
        if s.failing_handshakes == 0 {
            return None;
        }
        s.failing_handshakes -= 1;
        Some(s.failing_status)
    }

    pub(crate) fn take_cut(&self) -> Option<(u64, CutMode)> {
        self.state.lock().unwrap().cut.take()
    }

    pub(crate) fn latency(&self) -> Duration {
        self.state.lock().unwrap().latency
    }

    pub(crate) fn is_denied(&self, verb: &str, resource: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.denied.contains(&(verb.to_string(), resource.to_string()))
            || s.denied.contains(&("*".to_string(), resource.to_string()))
    }
}
