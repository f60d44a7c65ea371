//! A bound on requests in progress: past it a request is refused at once
//! ([`ServiceError::Overloaded`], RESOURCE_EXHAUSTED) instead of queueing without bound.
//! Cost: one semaphore try-acquire per request.

use super::ServiceError;
use crate::telemetry::metric;

pub struct RequestSlots {
    semaphore: tokio::sync::Semaphore,
    limit: usize,
}

impl RequestSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            semaphore: tokio::sync::Semaphore::new(limit),
            limit,
        }
    }

    /// A slot held for the request's lifetime, or `Overloaded`.
    pub fn try_acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ServiceError> {
        self.semaphore.try_acquire().map_err(|_| {
            metrics::counter!(metric::REQUESTS_SHED).increment(1);
            ServiceError::Overloaded { limit: self.limit }
        })
    }
}
