//! Integration tests of vouch-scan (one test binary: see STYLE.md on link time).

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod cli;
mod images;
mod proptests;
mod rules;
