//! The measurement tag at the start of every chat message, and the `client_id` every
//! send carries: writing them and reading them back. Pure text handling: it never
//! touches the run's state.

/// The measurement tag at the start of every chat message:
/// `[lt RUNTAG c=CONV s=SLOT q=SEQ t=SENT_US] filler...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag<'a> {
    pub run: &'a str,
    pub conv: usize,
    pub slot: usize,
    pub seq: usize,
    pub sent_us: u64,
}

impl Tag<'_> {
    /// Writes the message content, `len` characters long (at least the tag).
    pub fn content(&self, filler: &str, len: usize) -> String {
        let mut s = format!(
            "[lt {} c={} s={} q={} t={}] ",
            self.run, self.conv, self.slot, self.seq, self.sent_us
        );
        if s.len() < len {
            let need = len - s.len();
            s.push_str(&filler[..need.min(filler.len())]);
        }
        s
    }

    /// The message's `client_id`: the run and the sender's message number, without the
    /// send time, so every resend of the message carries the same one. The server
    /// scopes it to the sender and the conversation, which the seat already names.
    pub fn client_id(&self) -> String {
        format!("{}-{}", self.run, self.seq)
    }
}

/// The sender's message number in a `client_id` of run `run`; `None` for another
/// run's or a malformed one.
pub fn client_number(client_id: &str, run: &str) -> Option<usize> {
    let (id_run, number) = client_id.split_once('-')?;
    if id_run != run {
        return None;
    }
    number.parse().ok()
}

/// Reads the tag of a message's content; `None` when it has none.
pub fn parse_tag(content: &str) -> Option<Tag<'_>> {
    let rest = content.strip_prefix("[lt ")?;
    let end = rest.find(']')?;
    let mut fields = rest[..end].split(' ');
    let run = fields.next()?;
    let mut field = |key: &str| -> Option<u64> { fields.next()?.strip_prefix(key)?.parse().ok() };
    let conv = usize::try_from(field("c=")?).ok()?;
    let slot = usize::try_from(field("s=")?).ok()?;
    let seq = usize::try_from(field("q=")?).ok()?;
    let sent_us = field("t=")?;
    Some(Tag {
        run,
        conv,
        slot,
        seq,
        sent_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let tag = Tag {
            run: "0badf00d",
            conv: 12,
            slot: 3,
            seq: 4567,
            sent_us: 123_456_789,
        };
        let filler = "abc ".repeat(100);
        let content = tag.content(&filler, 120);
        assert_eq!(content.len(), 120);
        assert_eq!(parse_tag(&content), Some(tag));
        assert_eq!(parse_tag("hello"), None);
        assert_eq!(parse_tag("[lt x c=1 s=2 q=3] nope"), None);
    }

    #[test]
    fn client_ids_name_the_message_without_its_send_time() {
        let tag = Tag {
            run: "0badf00d",
            conv: 12,
            slot: 3,
            seq: 4567,
            sent_us: 123_456_789,
        };
        let id = tag.client_id();
        assert!(id.len() <= 64, "{id}");
        assert_eq!(Tag { sent_us: 1, ..tag }.client_id(), id);
        assert_eq!(client_number(&id, "0badf00d"), Some(4567));
        assert_eq!(client_number(&id, "feedface"), None);
        assert_eq!(client_number("0badf00d-x", "0badf00d"), None);
        assert_eq!(client_number("0badf00d", "0badf00d"), None);
    }
}
