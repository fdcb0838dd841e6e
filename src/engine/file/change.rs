//! A logged change: the state one key takes, as a log entry carries it, the overlay holds it
//! until a checkpoint, and a checkpoint or a replay writes it into the file.
//!
//! Why: the three are one concept; one type keeps them from drifting apart. Invariant: a `Put`
//! carries the record's encoded bytes and its encoded stored response (none while in flight),
//! exactly what `format::tables::put` writes; a `Delete` removes the record and its entry.

/// The state a key takes, over bytes owned (`Box<[u8]>`, in the overlay) or borrowed (`&[u8]`,
/// read from the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change<B> {
    /// The record's bytes, and its stored response's (none in flight).
    Put { record: B, response: Option<B> },
    /// The record is gone.
    Delete,
}

impl<B: AsRef<[u8]>> Change<B> {
    /// The same change, over borrowed bytes.
    pub(crate) fn as_slices(&self) -> Change<&[u8]> {
        match self {
            Change::Put { record, response } => Change::Put {
                record: record.as_ref(),
                response: response.as_ref().map(AsRef::as_ref),
            },
            Change::Delete => Change::Delete,
        }
    }
}
