//! The tekfed hub: what it decides and how it reaches member clusters.
//!
//! Decisions are pure functions over data, unit-tested without an API
//! server; reconcilers read, call them, and write.
//!
//! - [`placement`]: which member clusters a placement selects.
//! - [`overrides`]: the object a member gets, with its overrides applied.
//! - [`ownership`]: the field manager and labels marking what tekfed owns.

pub mod overrides;
pub mod ownership;
pub mod placement;
