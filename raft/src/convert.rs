//! Conversions between openraft's types and the protobuf messages of the replica
//! transport, one file per type family.
//!
//! The orphan rule forbids `From`/`TryFrom` between two foreign types, so the direction
//! openraft → protobuf is the infallible [`IntoProto`] and the direction protobuf →
//! openraft is the fallible [`FromProto`]: a peer can send a message with a required
//! field missing, and that is a [`ConvertError`] naming the message and the field.

mod append;
mod entry;
mod log_id;
mod membership;
mod snapshot;
mod vote;
mod vote_rpc;

/// A protobuf message of the replica transport does not describe a valid openraft value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A field that proto3 lets be absent but openraft requires was absent.
    #[error("{message}.{field} is missing")]
    Missing {
        /// The protobuf message, e.g. `AppendEntriesRequest`.
        message: &'static str,
        /// The absent field, e.g. `vote`.
        field: &'static str,
    },
    /// A field was present but its value is not valid.
    #[error("{message}.{field} is invalid: {reason}")]
    Invalid {
        /// The protobuf message.
        message: &'static str,
        /// The offending field.
        field: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
}

/// Infallible conversion of an openraft value into its protobuf message.
pub trait IntoProto<P> {
    /// Converts `self` into the protobuf message `P`.
    fn into_proto(self) -> P;
}

/// Fallible conversion of a protobuf message into an openraft value.
pub trait FromProto<P>: Sized {
    /// Converts the protobuf message `proto`, failing when a required field is missing or
    /// a value is invalid.
    ///
    /// # Errors
    /// [`ConvertError`] naming the message and the field at fault.
    fn from_proto(proto: P) -> Result<Self, ConvertError>;
}

/// Converts the protobuf message `proto` into the openraft value `T`; a shorthand for
/// [`FromProto::from_proto`] that lets the target be inferred.
///
/// # Errors
/// [`ConvertError`] naming the message and the field at fault.
pub fn from_proto<T: FromProto<P>, P>(proto: P) -> Result<T, ConvertError> {
    T::from_proto(proto)
}

/// Returns the value of a required message field or the error naming it.
fn required<T>(
    value: Option<T>,
    message: &'static str,
    field: &'static str,
) -> Result<T, ConvertError> {
    value.ok_or(ConvertError::Missing { message, field })
}

// === impl ConvertError ===

impl From<ConvertError> for tonic::Status {
    fn from(error: ConvertError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

// Options of convertible values convert element-wise: an absent optional field is `None`.

impl<T, P> IntoProto<Option<P>> for Option<T>
where
    T: IntoProto<P>,
{
    fn into_proto(self) -> Option<P> {
        self.map(IntoProto::into_proto)
    }
}

impl<T, P> FromProto<Option<P>> for Option<T>
where
    T: FromProto<P>,
{
    fn from_proto(proto: Option<P>) -> Result<Self, ConvertError> {
        proto.map(T::from_proto).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_field_message_names_message_and_field() {
        let error = ConvertError::Missing { message: "AppendEntriesRequest", field: "vote" };
        assert_eq!(error.to_string(), "AppendEntriesRequest.vote is missing");
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
