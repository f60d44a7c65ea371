//! The book of decisions: what a Score selected and a Feedback answers, as plain data.
//!
//! - [`events`]: selections, the events that change a router, feedback forms and outcomes.
//! - `pending`: the pending-decision book (TTL, capacity, answered ids, the scores a
//!   decision kept for label feedback).
//!
//! Nothing here knows a router: a [`crate::routers::Router`] holds a `PendingBook` and
//! applies these events. Costs: a pending decision is its id, arms, context and scores
//! (O(d + responses) bytes) until it is answered or expires.

pub mod events;
pub(crate) mod pending;
