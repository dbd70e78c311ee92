//! keel-tests: the multi-process harness used by the end-to-end tests.
