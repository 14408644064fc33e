//! Arbitrary bytes as an encoded routing table: decode validates everything; what decodes
//! re-encodes to a table that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routing::RoutingTable;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = RoutingTable::decode(data) {
        let again = RoutingTable::decode(&table.encode()).expect("a valid table round-trips");
        assert_eq!(again, table);
    }
});
