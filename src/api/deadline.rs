//! The caller's deadline answered as DEADLINE_EXCEEDED. tonic's server enforces a request's
//! `grpc-timeout` itself, and answers CANCELLED "Timeout expired" when it passes; a client
//! whose own timer had not fired yet then sees CANCELLED, which nothing retries and nothing
//! documents. [`DeadlineLayer`] sits inside tonic's timeout and ends the request a few
//! milliseconds before it with DEADLINE_EXCEEDED (tonic polls the service before its own timer,
//! so this answer always wins). Handlers see the same deadline as before, minus that margin.
//! Cost: one timer per request that carries a deadline.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

/// How much earlier than tonic's own timeout a request is ended.
const MARGIN: Duration = Duration::from_millis(5);

/// Wraps every gRPC service of the server (see the module comment).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// A service whose requests end with DEADLINE_EXCEEDED when their `grpc-timeout` passes.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(grpc_timeout);
        let answer = self.inner.call(request);
        let Some(timeout) = timeout else {
            return Box::pin(answer);
        };
        Box::pin(async move {
            match tokio::time::timeout(timeout.saturating_sub(MARGIN), answer).await {
                Ok(answered) => answered,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the request's deadline ({} ms) passed before it was answered",
                    timeout.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// A `grpc-timeout` header's value: at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(
            grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "12", "1x", "-1S", "123456789S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
