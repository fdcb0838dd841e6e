//! The decoders of file bytes on arbitrary input: the record (full and fixed part) and the
//! stored response blob. Each refuses bad bytes with an error, never a panic, and what it
//! accepts encodes back to the same bytes (a record up to its reserved field, which a
//! version 1 reader ignores; docs/format.md).
#![no_main]

use idemstore::__fuzz::{
    RECORD_RESERVED, decode_record, decode_record_fixed_part, decode_response,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixed = decode_record_fixed_part(data);
    match decode_record(data) {
        Ok(record) => {
            // The full decoder accepts only what the fixed-part decoder accepts, and both
            // read the same fields.
            assert_eq!(fixed.as_deref(), Ok(record.fixed_part.as_str()));
            let mut expected = data.to_vec();
            expected[RECORD_RESERVED].fill(0);
            assert_eq!(record.reencoded, expected, "record does not round-trip");
            assert_eq!(decode_record(&record.reencoded), Ok(record.clone()));
        }
        Err(message) => assert!(!message.is_empty()),
    }
    if let Ok((response, again)) = decode_response(data) {
        assert_eq!(again, data, "response blob does not round-trip");
        assert_eq!(response.encoded_len(), data.len());
    }
});
