//! kubesim: a small Kubernetes API server for tests and the demo.
