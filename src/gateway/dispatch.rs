//! Calls the layered gRPC stack in process: the request message is encoded and framed by tonic's
//! client exactly as on the wire (`application/grpc`, length-prefixed, path
//! `/package.Service/Method`), the `authorization` and `x-request-id` headers travel as metadata,
//! and the answer's frames, grpc-status, grpc-message and grpc-status-details-bin (in headers or
//! trailers) are read back by the same client code a remote caller would use.
//!
//! The client keeps the service's message limit, and its own faults (a size it refuses, a
//! message it cannot encode or decode) go through the error table with an ErrorInfo, like every
//! answer of the stack.

use http::{HeaderMap, uri::PathAndQuery};
use prost::{Message as _, bytes::Buf};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{
    Status,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming},
    metadata::MetadataMap,
};

use crate::{
    auth::PeerAddress,
    grpc::{
        InProcessService,
        codec::MAX_MESSAGE_BYTES,
        errors::{Side, internal, tonic_size_fault},
    },
};

/// A status of the in-process client: its own size refusal mapped into the error table; any
/// other status as the stack sent it.
pub fn client_fault(status: Status) -> Status {
    tonic_size_fault(&status, Side::Client).unwrap_or(status)
}

/// A tonic codec for messages known only by their descriptors.
struct DynamicCodec {
    response: MessageDescriptor,
}

struct DynamicEncoder;

struct DynamicDecoder {
    response: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder {
            response: self.response.clone(),
        }
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buffer)
            .map_err(|error| internal(format!("cannot encode the request: {error}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = buffer.copy_to_bytes(buffer.remaining());
        DynamicMessage::decode(self.response.clone(), bytes)
            .map(Some)
            .map_err(|error| internal(format!("cannot decode the response: {error}")))
    }
}

/// One call through the stack.
pub struct Call<'a> {
    pub service: &'a InProcessService,
    pub path: &'a PathAndQuery,
    pub request: DynamicMessage,
    pub response: MessageDescriptor,
    /// The HTTP headers that travel as gRPC metadata.
    pub headers: HeaderMap,
    /// Where the HTTP request came from.
    pub client: Option<PeerAddress>,
}

impl Call<'_> {
    fn prepare(
        self,
    ) -> (
        Grpc<InProcessService>,
        tonic::Request<DynamicMessage>,
        DynamicCodec,
    ) {
        let grpc = Grpc::new(self.service.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut extensions = tonic::Extensions::default();
        if let Some(client) = self.client {
            extensions.insert(client);
        }
        let request = tonic::Request::from_parts(
            MetadataMap::from_headers(self.headers),
            extensions,
            self.request,
        );
        let codec = DynamicCodec {
            response: self.response,
        };
        (grpc, request, codec)
    }

    /// A unary call: the response message, or the Status it failed with.
    pub async fn unary(self) -> Result<DynamicMessage, Status> {
        let path = self.path.clone();
        let (mut grpc, request, codec) = self.prepare();
        // The stack's error type is Infallible: readiness cannot fail.
        if let Err(never) = grpc.ready().await {
            match never {}
        }
        grpc.unary(request, path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(client_fault)
    }

    /// A server-streaming call: the stream of messages (with the response's metadata) once the
    /// call was accepted, or the Status it was refused with before any message. (A message's own
    /// status passes [`client_fault`] where the stream is read.)
    pub async fn server_streaming(
        self,
    ) -> Result<tonic::Response<Streaming<DynamicMessage>>, Status> {
        let path = self.path.clone();
        let (mut grpc, request, codec) = self.prepare();
        if let Err(never) = grpc.ready().await {
            match never {}
        }
        grpc.server_streaming(request, path, codec)
            .await
            .map_err(client_fault)
    }
}
