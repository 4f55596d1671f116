//! A step's output as it arrives: redacted line by line (so a secret split across two reads is
//! still caught), then capped to 64 KiB (first 16 KiB + last 48 KiB).

use std::sync::Arc;

use warmpool_types::output::CappedOutput;

use warmpool_types::state::StepName;

use super::recorder::RunRecorder;
use super::redact::Redactor;

/// Where a step's redacted output also goes as it arrives: its boot's recorder.
pub struct OutputSink {
    pub recorder: Arc<dyn RunRecorder>,
    pub step: StepName,
}

/// Longest stretch without a newline held back for redaction before it is flushed anyway.
const MAX_PENDING: usize = 256 * 1024;

pub struct StepLog {
    redactor: Arc<Redactor>,
    pending: String,
    out: CappedOutput,
    sink: Option<OutputSink>,
}

impl StepLog {
    pub fn new(redactor: Arc<Redactor>, sink: Option<OutputSink>) -> Self {
        Self {
            redactor,
            pending: String::new(),
            out: CappedOutput::default(),
            sink,
        }
    }

    /// Adds raw output (not yet redacted).
    pub fn push(&mut self, text: &str) {
        self.pending.push_str(text);
        if let Some(nl) = self.pending.rfind('\n') {
            let rest = self.pending.split_off(nl + 1);
            let done = std::mem::replace(&mut self.pending, rest);
            self.emit(&done);
        }
        let keep = self.redactor.longest().saturating_sub(1);
        if self.pending.len() > MAX_PENDING.max(keep * 2) {
            // A very long line: flush all but what could still be the start of a secret.
            let mut cut = self.pending.len() - keep;
            while !self.pending.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = self.pending.split_off(cut);
            let done = std::mem::replace(&mut self.pending, rest);
            self.emit(&done);
        }
    }

    /// Adds a whole line of our own (a `$ command` header, a note), ending it with a newline.
    pub fn line(&mut self, text: &str) {
        self.flush();
        let mut l = text.to_string();
        l.push('\n');
        self.emit(&l);
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let done = std::mem::take(&mut self.pending);
            self.emit(&done);
        }
    }

    fn emit(&mut self, text: &str) {
        let red = self.redactor.redact(text);
        self.out.push(&red);
        if let Some(s) = &self.sink {
            s.recorder.output(s.step, &red);
        }
    }

    /// Redacts a text of our own (an error line) with the same secrets.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text).into_owned()
    }

    pub fn finish(mut self) -> String {
        self.flush();
        self.out.render().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_split_across_pushes_is_redacted() {
        let r = Arc::new(Redactor::new([("TOKEN", "hunter2-secret")]));
        let mut log = StepLog::new(r, None);
        log.line("$ show");
        log.push("value is hunter");
        log.push("2-secret and ");
        log.push("more\nhunter2-sec");
        log.push("ret");
        assert_eq!(
            log.finish(),
            "$ show\nvalue is [REDACTED:TOKEN] and more\n[REDACTED:TOKEN]"
        );
    }
}
