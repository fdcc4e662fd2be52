//! The upgraded connection's socket in two halves: bytes arrive through `ReadHalf`
//! and frames leave through `WriteHalf`.
//!
//! Plain TCP on an io_uring shard runs on the completion path. The socket is taken
//! back from hyper; a read waits for readiness with a poll submitted to the ring, then
//! receives what arrived into the shard's scratch buffer; a write is an owned-buffer
//! `writev` submitted to the ring. The sends of one tick (a fan-out to every member of
//! a conversation) thus reach the kernel in one `io_uring_enter` rather than one system
//! call each. TLS connections, and every connection of an epoll shard, stay on the
//! readiness-mode stream hyper served.
//!
//! An idle connection holds no buffer here: reads go through one scratch buffer per
//! shard thread, and a write owns its frames only while it runs. Nothing here parses:
//! bytes in, whole frames out.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use monoio::buf::IoVecBuf;
use monoio::io::{AsyncWriteRent, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::reader::{ReadError, Source};

/// One read's worth of bytes, shared by every connection of the shard thread. A read
/// fills it and the bytes are moved out before anything else can run.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// Frames handed to the kernel in one vectored write, at most.
const FRAMES_PER_WRITE: usize = 64;

type Stream = TokioIo<Upgraded>;

pub enum ReadHalf {
    /// Completion path. `early` holds what hyper read past the upgrade request.
    Ring {
        socket: TcpOwnedReadHalf,
        early: Bytes,
    },
    Stream(tokio::io::ReadHalf<Stream>),
}

pub enum WriteHalf {
    Ring(TcpOwnedWriteHalf),
    Stream(tokio::io::WriteHalf<Stream>),
}

/// Splits an upgraded connection, on the completion path where the shard's driver
/// and the socket allow it.
pub fn split(upgraded: Upgraded) -> io::Result<(ReadHalf, WriteHalf)> {
    let upgraded = if monoio::utils::is_legacy() {
        upgraded
    } else {
        match crate::socket::take_plain(upgraded) {
            Ok((socket, early)) => {
                let socket = socket.try_into_comp_io().map_err(|(e, _)| e)?;
                let (read, write) = socket.into_split();
                let read = ReadHalf::Ring {
                    socket: read,
                    early,
                };
                return Ok((read, WriteHalf::Ring(write)));
            }
            Err(tls) => tls,
        }
    };
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    Ok((ReadHalf::Stream(read), WriteHalf::Stream(write)))
}

impl Source for ReadHalf {
    async fn fill(&mut self, pending: &mut Vec<u8>) -> Result<(), ReadError> {
        match self {
            Self::Ring { socket, early } => {
                if !early.is_empty() {
                    pending.extend_from_slice(early);
                    *early = Bytes::new();
                    return Ok(());
                }
                // SAFETY: the two halves share the stream through monoio's cell, and
                // the write half may be inside a `writev` meanwhile. Waiting for
                // readiness only registers a poll on the descriptor, independent of
                // writes, which is the contract monoio's own halves rely on (`Split`).
                #[allow(unsafe_code)]
                let stream = unsafe { &*socket.0.get() };
                loop {
                    stream.readable(true).await.map_err(|_| ReadError::Gone)?;
                    if receive(stream.as_raw_fd(), pending)? {
                        return Ok(());
                    }
                }
            }
            Self::Stream(stream) => {
                poll_fn(|cx| {
                    SCRATCH.with_borrow_mut(|scratch| {
                        let mut buf = ReadBuf::new(scratch);
                        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                            Poll::Pending => Poll::Pending,
                            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                                pending.extend_from_slice(buf.filled());
                                Poll::Ready(Ok(()))
                            }
                            Poll::Ready(_) => Poll::Ready(Err(ReadError::Gone)),
                        }
                    })
                })
                .await
            }
        }
    }
}

/// One non-blocking receive through the scratch buffer into `pending`; `false` when
/// there was nothing to read after all.
fn receive(fd: RawFd, pending: &mut Vec<u8>) -> Result<bool, ReadError> {
    SCRATCH.with_borrow_mut(|scratch| {
        // SAFETY: the buffer is valid for writes of its whole length, and the call
        // returns before anything else can touch it.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Ok(0) => Err(ReadError::Gone),
            Ok(n) => {
                pending.extend_from_slice(&scratch[..n]);
                Ok(true)
            }
            Err(_) => match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
                _ => Err(ReadError::Gone),
            },
        }
    })
}

impl WriteHalf {
    /// Writes every frame of `frames` straight from their shared buffers, as many per
    /// system call (or ring submission) as the kernel takes: nothing is copied.
    pub async fn write_all(&mut self, frames: &mut Vec<Bytes>) -> io::Result<()> {
        let mut cursor = Cursor::default();
        match self {
            Self::Ring(socket) => {
                // The frames travel with the submission and come back with its result.
                let mut gather = Gather {
                    frames: std::mem::take(frames),
                    iovecs: Vec::new(),
                };
                let result = loop {
                    if cursor.done(&gather.frames) {
                        break Ok(());
                    }
                    gather.aim(cursor);
                    let (written, back) = socket.writev(gather).await;
                    gather = back;
                    match written {
                        Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => cursor.advance(&gather.frames, n),
                        Err(e) => break Err(e),
                    }
                };
                *frames = gather.frames;
                result
            }
            Self::Stream(stream) => {
                while !cursor.done(frames) {
                    let written = poll_fn(|cx| {
                        // Built on every poll, on the stack: the connection's future
                        // holds no slices.
                        let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE];
                        let mut n = 0;
                        for (slice, bytes) in slices.iter_mut().zip(cursor.unwritten(frames)) {
                            *slice = IoSlice::new(bytes);
                            n += 1;
                        }
                        Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n])
                    })
                    .await?;
                    if written == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    cursor.advance(frames, written);
                }
                Ok(())
            }
        }
    }

    /// Ends our direction of the TCP connection.
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Self::Ring(socket) => socket.shutdown().await,
            Self::Stream(stream) => stream.shutdown().await,
        };
    }
}

/// How far a batch of frames has been written.
#[derive(Clone, Copy, Default)]
struct Cursor {
    /// The first frame not yet written in full.
    first: usize,
    /// How much of it is.
    offset: usize,
}

impl Cursor {
    fn done(self, frames: &[Bytes]) -> bool {
        self.first >= frames.len()
    }

    fn advance(&mut self, frames: &[Bytes], written: usize) {
        self.offset += written;
        while self.first < frames.len() && self.offset >= frames[self.first].len() {
            self.offset -= frames[self.first].len();
            self.first += 1;
        }
    }

    /// What one vectored write should carry next.
    fn unwritten(self, frames: &[Bytes]) -> impl Iterator<Item = &[u8]> {
        frames[self.first..]
            .iter()
            .take(FRAMES_PER_WRITE)
            .enumerate()
            .map(move |(i, frame)| {
                if i == 0 {
                    &frame[self.offset..]
                } else {
                    &frame[..]
                }
            })
    }
}

/// Frames owned by a `writev` submission, and the vectors pointing into them.
struct Gather {
    frames: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

impl Gather {
    fn aim(&mut self, cursor: Cursor) {
        self.iovecs.clear();
        self.iovecs
            .extend(cursor.unwritten(&self.frames).map(|bytes| libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            }));
    }
}

// SAFETY: the vectors point into the frames' heap buffers, which `Bytes` never moves,
// and the value that owns both is held by the runtime for as long as the kernel may
// read them.
#[allow(unsafe_code)]
unsafe impl IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}
