//! Integration tests of vouch-scan (one test binary: see STYLE.md on link time).

mod cli;
mod images;
mod proptests;
mod rules;
