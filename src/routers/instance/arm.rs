//! An arm of a router: the RM it routes to and the model the policy keeps for it, and a
//! candidate arm offered to the policy at selection. Plain data: a LinUCB arm holds its
//! d×d factor (O(d²) memory); selection and updates live in `policy` and `answers`.

use crate::bandit::LinUcbArm;
use crate::routers::instance::statistics::ArmStatistics;

/// One arm of a router.
pub(in crate::routers) struct Arm {
    pub(in crate::routers) reward_model: String,
    /// LinUCB state (LinUCB routers only).
    pub(in crate::routers) linucb: Option<LinUcbArm>,
    /// Exp3 log-weight (Exp3 routers only).
    pub(in crate::routers) log_weight: f64,
    pub(in crate::routers) statistics: ArmStatistics,
}

/// A selectable arm: an existing one, or an accepted serving RM that will join as a fresh
/// arm when the decision is recorded.
pub(in crate::routers) struct Candidate {
    pub(in crate::routers) reward_model: String,
    pub(in crate::routers) arm: Option<usize>,
}
