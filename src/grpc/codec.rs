//! The protobuf codec of ServersService: prost's, with a small first buffer per call. tonic
//! allocates the whole first buffer for every call and keeps it for a stream's lifetime; its
//! 8 KiB default was most of the memory of an open WatchOnboarding stream. Messages larger
//! than the buffer grow it as usual.
//!
//! A request prost cannot decode (a string that is not UTF-8, a truncated field) is the client's
//! fault: INVALID_ARGUMENT naming the field, through the error table, not prost's INTERNAL.
//!
//! It also owns the message limit, [`MAX_MESSAGE_BYTES`], that both ends keep: the server for
//! what it accepts and sends, the REST gateway's in-process client for what it reads back.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstEncoder};

use super::errors::{response_too_large, undecodable_message};

/// The largest message the service accepts or sends, as its protobuf encoding: tonic's default
/// decoding limit, which gRPC clients keep too, so a larger response would fail in the client.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// `message`, when its encoding is within [`MAX_MESSAGE_BYTES`]: a handler's last check, so that
/// a response too large for any client is INTERNAL with an ErrorInfo (`RESPONSE_TOO_LARGE`, the
/// cause logged), not a transport error the client reports without one.
pub fn within_message_limit<M: Message>(message: M) -> Result<M, Status> {
    let bytes = message.encoded_len();
    if bytes > MAX_MESSAGE_BYTES {
        return Err(response_too_large(bytes, MAX_MESSAGE_BYTES));
    }
    Ok(message)
}

/// The first buffer of a call: a whole Server or OnboardingStatus message fits in one
/// growth step.
const BUFFER_SIZE: usize = 512;
/// How much a stream batches before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with [`BUFFER_SIZE`] buffers (named by build.rs as the generated code's codec).
#[derive(Debug, Clone, Default)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LeanDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        LeanDecoder(PhantomData)
    }
}

/// prost decoding with [`BUFFER_SIZE`] buffers, its errors the client's.
#[derive(Debug)]
pub struct LeanDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for LeanDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buffer)
            .map(Some)
            .map_err(|error| undecodable_message(&error))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
    }
}
