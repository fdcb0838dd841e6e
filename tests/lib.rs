//! The integration tests, built as one binary. Each module is a scenario; test names carry the
//! contract rule they check (C1-C12, see docs/contract.md).

mod support;

mod basics;
