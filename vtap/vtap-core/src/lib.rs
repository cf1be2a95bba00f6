//! vtap core library: everything between a policy file and the kernel, with no
//! HTTP in it.
//!
//! Data flows one way:
//! [`policy::load`] (YAML → model) → [`policy::validate`] (all errors, with
//! field paths) → [`policy::compile`] (pure: policies → map entries) →
//! [`datapath::reconcile`] (write the inactive generation, flip) →
//! [`datapath::attach`] (TCX on the taps) → `ebpf/vtap_tc.c` → monitor
//! interfaces. [`engine::Engine`] is the one owner of kernel state;
//! [`telemetry`] reads the per-CPU counters for `/metrics`.

pub mod capture;
pub mod datapath;
pub mod engine;
pub mod exposition;
pub mod netlink;
pub mod policy;
pub mod probes;
pub mod store;
pub mod tunnel;
