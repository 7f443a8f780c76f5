//! Generated protobuf and gRPC code for Federator.
//!
//! One module per API: [`raft`] (replica transport), [`admin`] (operator API) and
//! [`federation`] (agent API), and [`spiffe_workload`], the SPIFFE Workload API (for the
//! test server that stands in for SPIRE; the agent's client is the `spiffe` crate's).
//! Conversions to and from domain types live with the
//! domain types, not here.

/// Replica-to-replica transport (`federator.raft.v1`).
pub mod raft {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("federator.raft.v1");
}

/// Operator API (`federator.admin.v1`).
pub mod admin {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("federator.admin.v1");
}

/// Agent-facing federation API (`federator.federation.v1`).
pub mod federation {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("federator.federation.v1");
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no package), client and server.
pub mod spiffe_workload {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The codec of the federation API: prost's, with small first buffers.
///
/// tonic allocates an encoding buffer per response body and keeps it for the life of the
/// stream, and a decoding buffer per request; both default to 8 KiB. A federation keeps
/// one long-lived `Watch` stream per agent connection, mostly idle, whose events are a
/// few hundred bytes, and a replica restart brings every agent's requests at once: small
/// first buffers (grown on demand for a bigger message) keep both cheap.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// First size of a response's encoding buffer.
    pub const ENCODE_BUFFER: usize = 1024;
    /// First size of a request's decoding buffer.
    pub const DECODE_BUFFER: usize = 1024;
    /// Encoded bytes gathered before they are handed to the transport (tonic's default).
    pub const YIELD_THRESHOLD: usize = 32 * 1024;

    /// [`tonic_prost::ProstCodec`] with small first buffers ([`ENCODE_BUFFER`],
    /// [`DECODE_BUFFER`]).
    #[derive(Debug, Clone)]
    pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallBufferCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for SmallBufferCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
        }
    }
}
