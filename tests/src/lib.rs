//! End-to-end tests live in `tests/`; shared test bodies live here.

pub mod conformance;
