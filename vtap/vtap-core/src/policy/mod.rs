//! Mirror policies: the policy file model, its validation, loading from files
//! and directories, and compilation into the datapath's classification tables.
//!
//! ```text
//! YAML/JSON ──load──▶ Vec<Policy> ──validate──▶ (all errors, with field paths)
//!                          │
//!                          └──compile(Assignment)──▶ CompiledSet ──▶ reconciler
//! ```
//!
//! * [`model`] — [`Policy`] and its parts, as written in `mirror-policies/*.yaml`
//!   or sent as JSON over REST; raw values are kept so that validation can name
//!   the exact field of a bad value.
//! * [`validate`] — every rule of `mirror-policies/README.md`; collects every
//!   error ([`FieldError`]: `field: message`).
//! * [`load`] — files (several `---` documents each) and directories;
//!   [`LoadError`] carries every problem with file, line/column and field path.
//! * [`compile`](mod@compile) — pure: a validated set and an [`Assignment`] of slots and
//!   output ids → the contents of one generation of the maps
//!   ([`CompiledSet`]).
//! * [`shaping`] — 1-in-N sampling and rate limits: their limits, the token
//!   bucket sizes and how they are written into a policy's action.
//! * [`reference`](mod@reference) — an independent classifier written from the policy
//!   semantics (it parses raw frames itself); the specification the C
//!   datapath and the compiled tables are tested against.
//! * `testgen` (feature `testgen`) — random valid policy sets and random frames
//!   for differential tests.

pub mod compile;
pub mod load;
pub mod model;
pub mod reference;
pub mod shaping;
#[cfg(any(test, feature = "testgen"))]
pub mod testgen;
pub mod validate;
pub mod when;

pub use compile::{Assignment, CompileError, CompiledSet, OutputKey, TapRule};
pub use load::{LoadError, Loaded, Problem, ProblemKind, load_and_validate, load_path, parse_str};
pub use model::{
    Direction, IntSpec, Match, NameOrNumber, Output, Policy, PortSpec, RateLimit, SampleBy,
};
pub use reference::classify;
pub use validate::{FieldError, validate_policy, validate_set};
