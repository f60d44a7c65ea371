//! The endpoints serving one remote model, whatever the protocol: each endpoint's URL, its
//! client, and whether the last probe or call found the model ready there; picked
//! round-robin among the ready ones. And [`CallError`], a failed call on one of them.
//! Cost: atomics only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One endpoint of the model.
struct Endpoint<C> {
    url: String,
    client: C,
    /// The last probe or call found the model ready here.
    ready: AtomicBool,
}

/// The endpoints of one remote model, used round-robin among the ready ones.
pub(in crate::models) struct EndpointSet<C> {
    endpoints: Vec<Endpoint<C>>,
    next: AtomicUsize,
}

impl<C> EndpointSet<C> {
    /// Every endpoint starts not ready (the first probe decides).
    pub(in crate::models) fn new(endpoints: impl IntoIterator<Item = (String, C)>) -> Self {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|(url, client)| Endpoint {
                    url,
                    client,
                    ready: AtomicBool::new(false),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(in crate::models) fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub(in crate::models) fn url(&self, endpoint: usize) -> &str {
        &self.endpoints[endpoint].url
    }

    pub(in crate::models) fn client(&self, endpoint: usize) -> &C {
        &self.endpoints[endpoint].client
    }

    pub(in crate::models) fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.url.clone()).collect()
    }

    /// The next ready endpoint, round-robin.
    pub(in crate::models) fn pick(&self) -> Option<usize> {
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&i| self.endpoints[i].ready.load(Ordering::Relaxed))
    }

    pub(in crate::models) fn set_ready(&self, endpoint: usize, ready: bool) {
        self.endpoints[endpoint]
            .ready
            .store(ready, Ordering::Relaxed);
    }

    pub(in crate::models) fn any_ready(&self) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.ready.load(Ordering::Relaxed))
    }

    /// Ask `ready` of every endpoint and mark each; the reasons of those not ready (`what`
    /// names the model in them).
    pub(in crate::models) async fn probe_each<F>(
        &self,
        what: &str,
        ready: impl Fn(usize) -> F,
    ) -> Vec<String>
    where
        F: Future<Output = Result<bool, CallError>>,
    {
        let mut reasons = Vec::new();
        for endpoint in 0..self.len() {
            match ready(endpoint).await {
                Ok(true) => self.set_ready(endpoint, true),
                Ok(false) => {
                    self.set_ready(endpoint, false);
                    reasons.push(format!("{}: {what} is not ready", self.url(endpoint)));
                }
                Err(error) => {
                    self.set_ready(endpoint, false);
                    reasons.push(error.to_string());
                }
            }
        }
        reasons
    }
}

/// A failed call: where, and the engine's (or the transport's) reason.
#[derive(Clone, Debug)]
pub(in crate::models) struct CallError {
    pub(in crate::models) endpoint: String,
    pub(in crate::models) reason: String,
    /// The engine could not be reached (connection refused, reset, no route): the endpoint
    /// is taken out at once.
    pub(in crate::models) unreachable: bool,
    /// The call's timer ran out (the engine did not answer in time).
    pub(in crate::models) timed_out: bool,
}

impl CallError {
    /// The local timer fired after `timeout`.
    pub(in crate::models) fn no_answer(endpoint: String, timeout: std::time::Duration) -> Self {
        CallError {
            endpoint,
            reason: format!("no answer within {} ms", timeout.as_millis()),
            unreachable: false,
            timed_out: true,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.reason)
    }
}
