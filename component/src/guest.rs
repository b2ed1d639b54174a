//! WIT glue (filled in below).
