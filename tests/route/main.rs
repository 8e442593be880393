//! The pure route parser, in one test binary: `table` holds it to the checklist case by
//! case, `prop` checks its properties over arbitrary and registry-shaped input.
mod prop;
mod table;
