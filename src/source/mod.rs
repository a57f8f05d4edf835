//! The customer's MySQL as its binlog shows it: what each event means (transactions, GTIDs,
//! compressed transactions, events without rows), and row images decoded into JSON. The live
//! stream (`stream/`) and the offline reader of binlog files (`binlog events`) share it, so both
//! read a binlog the same way.

pub mod decode;
pub mod events;
pub mod file;
pub mod gtid;
pub mod jsondiff;
