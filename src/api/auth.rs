//! Admin authentication: a bearer token compared in constant time.
//!
//! With a token configured (`server.admin_token` / `LASER_ADMIN_TOKEN`), every Admin RPC
//! needs `authorization: Bearer <token>`. Without one, Admin is open only when the server
//! listens on loopback (a warning is logged at startup); otherwise every Admin RPC is
//! refused, so a server exposed on a network never runs without a token by accident.

use tonic::{Request, Status};

/// What Admin requires of a caller.
#[derive(Clone)]
pub enum AdminAccess {
    Token(String),
    /// No token configured and the server listens on loopback only.
    LoopbackOnly,
    /// No token configured on a non-loopback address: Admin is refused.
    Refused,
}

impl AdminAccess {
    pub fn new(token: Option<String>, listens_on_loopback: bool) -> Self {
        match token.filter(|t| !t.is_empty()) {
            Some(token) => AdminAccess::Token(token),
            None if listens_on_loopback => AdminAccess::LoopbackOnly,
            None => AdminAccess::Refused,
        }
    }

    /// The tonic interceptor check.
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        match self {
            AdminAccess::LoopbackOnly => Ok(request),
            AdminAccess::Refused => Err(Status::unauthenticated(
                "admin RPCs are disabled: the server listens beyond loopback without server.admin_token (LASER_ADMIN_TOKEN)",
            )),
            AdminAccess::Token(expected) => {
                let presented = request
                    .metadata()
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.strip_prefix("Bearer "));
                match presented {
                    None => Err(Status::unauthenticated(
                        "admin RPCs need the metadata `authorization: Bearer <token>`",
                    )),
                    Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
                        Ok(request)
                    }
                    Some(_) => Err(Status::unauthenticated("the admin token is wrong")),
                }
            }
        }
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn token_checks() {
        let access = AdminAccess::new(Some("s3cret".into()), false);
        assert!(access.check(with_header(Some("Bearer s3cret"))).is_ok());
        assert_eq!(
            access
                .check(with_header(Some("Bearer nope")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            access.check(with_header(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            access
                .check(with_header(Some("s3cret")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn no_token_means_loopback_only() {
        assert!(
            AdminAccess::new(None, true)
                .check(with_header(None))
                .is_ok()
        );
        assert!(
            AdminAccess::new(Some(String::new()), false)
                .check(with_header(None))
                .is_err()
        );
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"ab", b"abc")
        );
    }
}
