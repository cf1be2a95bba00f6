//! The command-line client of the REST API: `vtap policy ...`, `vtap tap
//! ...`, `vtap stats`.
//!
//! - [`client`]: HTTP (ureq), bearer token, error decoding.
//! - [`output`]: `--output table|json|yaml`, aligned tables, error text.
//! - [`policy`], [`tap`], [`stats`]: one module per subcommand group.
//!
//! Exit codes: 0 success; 1 the daemon refused the request (any non-2xx
//! answer), a local file problem, or an unusable answer; 2 usage errors
//! (clap's own, and a bad `--api`); 3 the daemon cannot be reached.

pub mod capture;
pub mod client;
pub mod output;
pub mod policy;
pub mod probe;
pub mod stats;
pub mod tap;

use std::process::ExitCode;

use crate::wire::ErrorBody;
use client::Client;
use output::Format;

/// Default `--api`.
pub const DEFAULT_API: &str = "http://127.0.0.1:7470";

/// Options shared by every client subcommand (accepted anywhere on the
/// command line). `vtap daemon` refuses them (see [`CLIENT_ONLY`]).
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Output format of client commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Base URL of the daemon's REST API, for client commands.
    #[arg(long, global = true, env = "VTAP_API", default_value = DEFAULT_API)]
    pub api: String,
    /// Bearer token for client commands (sent as `Authorization: Bearer TOKEN`).
    #[arg(long, global = true, env = "VTAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Ids of the [`GlobalArgs`] that only client commands take.
pub const CLIENT_ONLY: [&str; 3] = ["output", "api", "token"];

/// Why a client command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Bad command-line input that clap cannot check (exit 2).
    Usage(String),
    /// A local problem (unreadable or malformed file, ...): each line is
    /// printed as is (exit 1).
    Local(Vec<String>),
    /// The daemon answered with a non-2xx status (exit 1).
    Api {
        /// `METHOD URL`.
        request: String,
        /// HTTP status.
        status: u16,
        /// The decoded (or synthesized, for non-JSON bodies) error.
        body: ErrorBody,
    },
    /// The daemon answered 2xx but not with what was expected (exit 1).
    BadAnswer {
        /// `METHOD URL`.
        request: String,
        /// What is wrong with the answer.
        reason: String,
    },
    /// No answer at all: connection refused, DNS, timeout, ... (exit 3).
    Unreachable {
        /// The base URL used.
        api: String,
        /// What the transport said.
        reason: String,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Local(_) | CliError::Api { .. } | CliError::BadAnswer { .. } => 1,
        }
    }

    /// The text printed on stderr (ends with a newline).
    pub fn render(&self) -> String {
        match self {
            CliError::Usage(m) => format!("error: {m}\n"),
            CliError::Local(lines) => {
                let mut s = String::new();
                for l in lines {
                    s.push_str(l);
                    s.push('\n');
                }
                s
            }
            CliError::Api { status, body, .. } => {
                let mut s = output::format_error(body);
                if *status == 401 {
                    s.push_str("hint: pass a token with --token or VTAP_TOKEN\n");
                }
                s
            }
            CliError::BadAnswer { request, reason } => {
                format!("error: unexpected answer to {request}: {reason}\n")
            }
            CliError::Unreachable { api, reason } => format!(
                "error: cannot reach the vtap daemon at {api}: {reason}\n\
                 hint: is `vtap daemon` running and listening there? (set --api or VTAP_API)\n"
            ),
        }
    }
}

/// What a command needs: how to talk to the daemon and how to print.
pub struct Ctx {
    pub global: GlobalArgs,
}

impl Ctx {
    pub fn new(global: GlobalArgs) -> Ctx {
        Ctx { global }
    }

    /// The HTTP client (fails on a bad `--api`).
    pub fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.global.api, self.global.token.as_deref())
    }

    pub fn format(&self) -> Format {
        self.global.output
    }
}

/// Runs a client command and turns its outcome into an exit code, printing
/// the error (if any) on stderr.
pub fn finish(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::emit_err(&e.render());
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorDetail;

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::Local(vec![]).exit_code(), 1);
        assert_eq!(
            CliError::Unreachable {
                api: "http://127.0.0.1:1".into(),
                reason: "connection refused".into()
            }
            .exit_code(),
            3
        );
        assert_eq!(
            CliError::BadAnswer {
                request: "GET x".into(),
                reason: "y".into()
            }
            .exit_code(),
            1
        );
    }

    #[test]
    fn api_error_text() {
        let e = CliError::Api {
            request: "PUT http://h/api/v1/policies".into(),
            status: 422,
            body: ErrorBody {
                error: "invalid policy".into(),
                details: vec![
                    ErrorDetail {
                        field: "policies[0].outputs[0].vlan".into(),
                        message: "must be 1..4094, not 5000".into(),
                    },
                    ErrorDetail {
                        field: String::new(),
                        message: "two policies named a".into(),
                    },
                ],
            },
        };
        assert_eq!(
            e.render(),
            "error: invalid policy\n  policies[0].outputs[0].vlan: must be 1..4094, not 5000\n  two policies named a\n"
        );
        let unauth = CliError::Api {
            request: "GET x".into(),
            status: 401,
            body: ErrorBody {
                error: "unauthenticated".into(),
                details: vec![],
            },
        };
        assert!(unauth.render().contains("--token"));
    }

    #[test]
    fn unreachable_names_the_url() {
        let e = CliError::Unreachable {
            api: "http://127.0.0.1:7470".into(),
            reason: "Connection refused (os error 111)".into(),
        };
        let s = e.render();
        assert!(
            s.starts_with(
                "error: cannot reach the vtap daemon at http://127.0.0.1:7470: Connection refused"
            ),
            "{s}"
        );
    }
}
