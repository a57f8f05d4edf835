//! What every watch stream shares with its hub and within itself: the bounded queue a hub hands
//! changes through (a full queue cuts its watcher off, which the stream then reports as having
//! fallen behind), the outbox of items ready for the client, and the stream a watcher's state
//! machine is polled as.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::Stream;
use tokio::sync::mpsc;

use super::{WatchError, lifeline::Ending};

/// The hub's end of one watcher's queue.
pub struct QueueSender<T> {
    pub id: u64,
    sender: mpsc::Sender<Arc<T>>,
    overflowed: Arc<AtomicBool>,
}

/// The stream's end.
pub struct QueueReceiver<T> {
    receiver: mpsc::Receiver<Arc<T>>,
    overflowed: Arc<AtomicBool>,
}

/// A watcher's queue of `capacity` changes.
pub fn queue<T>(id: u64, capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (sender, receiver) = mpsc::channel(capacity);
    let overflowed = Arc::new(AtomicBool::new(false));
    let sender = QueueSender {
        id,
        sender,
        overflowed: overflowed.clone(),
    };
    (
        sender,
        QueueReceiver {
            receiver,
            overflowed,
        },
    )
}

impl<T> QueueSender<T> {
    /// Hands `item` over; false when the watcher is gone or was cut off (its queue was full).
    fn offer(&self, item: &Arc<T>) -> bool {
        match self.sender.try_send(item.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut_off();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the watcher's queue as if it had fallen behind: it resumes from what it has.
    pub fn cut_off(&self) {
        self.overflowed.store(true, Ordering::Release);
    }
}

/// Hands `item` to every watcher, dropping those that are gone or cut off.
pub fn fan_out<T>(watchers: &mut Vec<QueueSender<T>>, item: T) {
    let item = Arc::new(item);
    watchers.retain(|watcher| watcher.offer(&item));
}

impl<T> QueueReceiver<T> {
    /// The next change; None when the hub cut this watcher off or is shutting down.
    pub async fn next(&mut self) -> Option<Arc<T>> {
        self.receiver.recv().await
    }

    /// Whether the hub cut this watcher off.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

/// What a stream has ready for its client, and whether anything comes after it.
pub struct Outbox<T> {
    pending: VecDeque<Result<T, WatchError>>,
    finished: bool,
}

impl<T> Default for Outbox<T> {
    fn default() -> Outbox<T> {
        Outbox {
            pending: VecDeque::new(),
            finished: false,
        }
    }
}

impl<T> Outbox<T> {
    /// The next item to send (`Some(None)`: the stream is over), or None when the stream must
    /// fetch more first. A replica shutting down ends the stream at once, mid-replay too.
    pub fn ready(&mut self, shutting_down: bool) -> Option<Option<Result<T, WatchError>>> {
        if shutting_down && !self.finished {
            self.pending.clear();
            self.fail(WatchError::ShuttingDown);
        }
        if let Some(item) = self.pending.pop_front() {
            return Some(Some(item));
        }
        self.finished.then_some(None)
    }

    pub fn push(&mut self, item: T) {
        self.pending.push_back(Ok(item));
    }

    /// Ends the stream with `error` after what is pending.
    pub fn fail(&mut self, error: WatchError) {
        self.pending.push_back(Err(error));
        self.finished = true;
    }

    /// Ends the stream after what is pending (or not, when `finished` is false).
    pub fn finish(&mut self, finished: bool) {
        self.finished = finished;
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Ends the stream as its lifeline says.
    pub fn end(&mut self, ending: Ending) {
        match ending {
            Ending::Fail(error) => self.fail(error),
            Ending::Quiet => self.finished = true,
        }
    }

    /// The queue ran dry: the watcher was cut off (it resumes after `last`) or the hub is
    /// going away.
    pub fn queue_ended<U>(&mut self, queue: &QueueReceiver<U>, last: i64) {
        if queue.overflowed() {
            self.fail(WatchError::Lagged(last));
        } else {
            self.fail(WatchError::ShuttingDown);
        }
    }
}

/// A watch stream's state machine: the next item for the client, or None when it is over.
pub trait Watcher: Send + 'static {
    type Item: Send + 'static;

    fn next_item(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;
}

/// `watcher` as the stream the connection's task polls: no task or channel of its own.
pub fn into_stream<W: Watcher>(
    watcher: W,
) -> std::pin::Pin<Box<dyn Stream<Item = W::Item> + Send>> {
    Box::pin(futures_util::stream::unfold(
        watcher,
        |mut watcher| async move {
            let item = watcher.next_item().await?;
            Some((item, watcher))
        },
    ))
}
