//! A schema-directed JSON decoder: reads one JSON object per record straight into Arrow
//! builders, converting only the declared fields and stepping over the others.
//!
//! Every record is fully validated (UTF-8, JSON grammar of every value, declared or not, and
//! nothing after the object), so a malformed record is rejected whole with the byte offset and
//! reason, and a record either appends one row to every column or nothing. Strings are scanned
//! 16 bytes at a time, so long values the pipeline ignores cost little, and keys in the order of
//! the records before are recognized by one comparison each (see [`ObjectDecoder::layout`]).
//!
//! Conversions: `string` takes a JSON string; `long` an integer (or a string holding one);
//! `double` any number (or a string holding one); `boolean` `true`/`false`; `timestamp` epoch
//! milliseconds as an integer or a string in RFC 3339 (or digits). `null` and missing fields are
//! null. A duplicated field keeps its last value.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use weir_crds::FieldType;

/// Containers nested deeper than this inside a record are rejected (no unbounded recursion or
/// memory on hostile input).
const MAX_DEPTH: usize = 256;

/// A declared field's value in the record being decoded.
#[derive(Clone, Copy)]
enum Val {
    Null,
    /// A string without escapes: byte range of the record.
    Span(u32, u32),
    /// An unescaped string, in the field's scratch buffer.
    Owned,
    I64(i64),
    F64(f64),
    Bool(bool),
}

enum Builder {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
}

/// Decodes records against one schema; reuse it across batches.
pub struct ObjectDecoder {
    names: Vec<Box<[u8]>>,
    /// Field names by [`name_slot`]: field index + 1, 0 for none, [`AMBIGUOUS`] when two
    /// declared names share the slot. Most keys of a record are not declared, and this rules
    /// them out without comparing bytes.
    slots: Box<[u8; 256]>,
    types: Vec<FieldType>,
    vals: Vec<Val>,
    owned: Vec<String>,
    builders: Vec<Builder>,
    key_scratch: String,
    /// The keys of the last records, in order, as they appeared (quoted, without escapes).
    /// Records from one producer usually repeat their keys in the same order, so the decoder
    /// first checks whether the next key is the one expected at its position: one comparison
    /// instead of scanning the string and looking its name up.
    layout: Vec<LayoutKey>,
}

/// A key of [`ObjectDecoder::layout`]: its bytes with both quotes, and its declared field.
struct LayoutKey {
    quoted: Box<[u8]>,
    /// The first 16 bytes of `quoted` (zero-padded) and a mask of them, to compare the usual
    /// short key with one 128-bit comparison instead of a call to `memcmp`.
    head: u128,
    head_mask: u128,
    field: Option<usize>,
}

impl LayoutKey {
    fn new(quoted: &[u8], field: Option<usize>) -> LayoutKey {
        let n = quoted.len().min(16);
        let mut head = [0u8; 16];
        head[..n].copy_from_slice(&quoted[..n]);
        let head_mask = if n == 16 { u128::MAX } else { (1u128 << (n * 8)) - 1 };
        LayoutKey { quoted: quoted.into(), head: u128::from_le_bytes(head), head_mask, field }
    }

    /// Whether `b` starts with this key.
    fn starts(&self, b: &[u8]) -> bool {
        match b.first_chunk::<16>() {
            Some(first) if self.quoted.len() <= 16 => (u128::from_le_bytes(*first) ^ self.head) & self.head_mask == 0,
            _ => b.starts_with(&self.quoted),
        }
    }
}

/// Keys beyond this position in a record are not remembered in the layout.
const MAX_LAYOUT: usize = 64;

struct Cursor<'a> {
    /// The record, validated as UTF-8 once.
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

type Res<T> = Result<T, String>;

impl<'a> Cursor<'a> {
    fn err<T>(&self, what: &str) -> Res<T> {
        match self.b.get(self.i) {
            Some(&c) if c.is_ascii_graphic() => Err(format!("at byte {}: {what}, found `{}`", self.i, c as char)),
            Some(_) => Err(format!("at byte {}: {what}", self.i)),
            None => Err(format!("at byte {}: {what}, found the end of the record", self.i)),
        }
    }

    /// The text between byte offsets `from` and `to`, which are cut at ASCII bytes (quotes,
    /// escapes, number ends), so only char boundaries are checked, not the bytes again.
    fn text(&self, from: usize, to: usize) -> &'a str {
        self.s.get(from..to).unwrap_or_default()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &str) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// A string at the cursor (on its opening quote). Without escapes, returns its byte range;
    /// with escapes, writes it unescaped into `out` and returns `None`.
    fn string(&mut self, out: &mut String) -> Res<Option<(usize, usize)>> {
        let open = self.i;
        let start = open + 1;
        let unterminated = || Err(format!("at byte {open}: unterminated string"));
        let Some(off) = string_stop(&self.b[start..]) else { return unterminated() };
        let mut at = start + off;
        if self.b[at] < 0x20 {
            self.i = at;
            return self.err("control character in a string (JSON needs it escaped)");
        }
        if self.b[at] == b'"' {
            self.i = at + 1;
            return Ok(Some((start, at)));
        }
        out.clear();
        let mut seg = start;
        loop {
            out.push_str(self.text(seg, at));
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Ok(None);
            }
            self.i = at;
            self.escape(out)?;
            seg = self.i;
            let Some(off) = string_stop(&self.b[seg..]) else { return unterminated() };
            at = seg + off;
            if self.b[at] < 0x20 {
                self.i = at;
                return self.err("control character in a string (JSON needs it escaped)");
            }
        }
    }

    /// One escape sequence at the cursor (on its backslash), appended to `out`.
    fn escape(&mut self, out: &mut String) -> Res<()> {
        let c = self.b.get(self.i + 1).copied();
        self.i += 2;
        let ch = match c {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                        return self.err("a high surrogate must be followed by a low surrogate `\\u`");
                    }
                    self.i += 2;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(format!("at byte {}: invalid low surrogate", self.i - 4));
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                match char::from_u32(code) {
                    Some(ch) => ch,
                    None => return Err(format!("at byte {}: invalid unicode escape", self.i - 4)),
                }
            }
            _ => {
                self.i -= 1;
                return self.err("invalid escape sequence");
            }
        };
        out.push(ch);
        Ok(())
    }

    fn hex4(&mut self) -> Res<u32> {
        match self.b.get(self.i..self.i + 4) {
            Some(d) if d.iter().all(u8::is_ascii_hexdigit) => {
                self.i += 4;
                Ok(d.iter().fold(0, |v, &c| v * 16 + (c as char).to_digit(16).unwrap_or(0)))
            }
            _ => self.err("expected 4 hex digits after `\\u`"),
        }
    }

    /// A number at the cursor, checked against JSON's grammar; returns its text and whether it
    /// is an integer.
    fn number(&mut self) -> Res<(&'a str, bool)> {
        let start = self.i;
        let b = self.b;
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - s
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => {
                self.i = i;
                return self.err("expected a digit");
            }
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            i += 1;
            integer = false;
            if digits(&mut i) == 0 {
                self.i = i;
                return self.err("expected a digit after `.`");
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            integer = false;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                self.i = i;
                return self.err("expected a digit in the exponent");
            }
        }
        self.i = i;
        Ok((self.text(start, i), integer))
    }

    fn literal(&mut self, word: &[u8]) -> Res<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("expected a JSON value")
        }
    }

    /// Steps over one value of any kind, validating it.
    fn skip_value(&mut self, scratch: &mut String) -> Res<()> {
        let mut stack = [0u8; MAX_DEPTH];
        let mut depth = 0;
        loop {
            self.ws();
            // One value (or the opening of a container).
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return self.err("nested too deeply");
                        }
                        stack[depth] = open;
                        depth += 1;
                        if open == b'{' {
                            self.member_key(scratch)?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string(scratch)?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return self.err("expected a JSON value"),
            }
            // After a value: close containers or move to the next element.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.ws();
                let top = stack[depth - 1];
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if top == b'{' {
                            self.ws();
                            self.member_key(scratch)?;
                        }
                        break;
                    }
                    Some(b'}') if top == b'{' => {
                        self.i += 1;
                        depth -= 1;
                    }
                    Some(b']') if top == b'[' => {
                        self.i += 1;
                        depth -= 1;
                    }
                    _ => return self.err(if top == b'{' { "expected `,` or `}`" } else { "expected `,` or `]`" }),
                }
            }
        }
    }

    /// `"key" :` inside an object being skipped.
    fn member_key(&mut self, scratch: &mut String) -> Res<()> {
        if self.peek() != Some(b'"') {
            return self.err("expected a field name");
        }
        self.string(scratch)?;
        self.ws();
        self.expect(b':', "expected `:`")
    }
}

/// The first byte in `b` that ends a plain run inside a JSON string: `"`, `\\` or a control
/// character (below 0x20, which JSON does not allow unescaped). 16 bytes at a time with SSE2
/// (part of every x86_64 CPU); byte by byte elsewhere.
fn string_stop(b: &[u8]) -> Option<usize> {
    let stop = |c: &u8| *c == b'"' || *c == b'\\' || *c < 0x20;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let mut i = 0;
        // SAFETY: SSE2 is in the x86_64 baseline; every load reads 16 bytes inside `b`.
        unsafe {
            let (quote, backslash, ctl) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\\' as i8), _mm_set1_epi8(0x1f));
            while i + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
                // max(v, 0x1f) == 0x1f exactly when v <= 0x1f (unsigned).
                let hit = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    _mm_cmpeq_epi8(_mm_max_epu8(v, ctl), ctl),
                );
                let mask = _mm_movemask_epi8(hit);
                if mask != 0 {
                    return Some(i + mask.trailing_zeros() as usize);
                }
                i += 16;
            }
        }
        b[i..].iter().position(stop).map(|p| p + i)
    }
    #[cfg(not(target_arch = "x86_64"))]
    b.iter().position(stop)
}

/// A slot of [`ObjectDecoder::slots`] marking names that need a search.
const AMBIGUOUS: u8 = u8::MAX;

/// A field name's slot: a hash of its length and first and last bytes.
fn name_slot(name: &[u8]) -> usize {
    let (first, last) = (name.first().copied().unwrap_or(0), name.last().copied().unwrap_or(0));
    (name.len().wrapping_mul(31) ^ (first as usize).wrapping_mul(7) ^ (last as usize).rotate_left(3)) & 255
}

impl ObjectDecoder {
    /// A decoder for `fields` in the given order (the column order of the batches).
    pub fn new<'f>(fields: impl IntoIterator<Item = (&'f str, FieldType)>) -> ObjectDecoder {
        let (names, types): (Vec<Box<[u8]>>, Vec<FieldType>) =
            fields.into_iter().map(|(n, t)| (n.as_bytes().into(), t)).unzip();
        let n = names.len();
        let mut slots = Box::new([0u8; 256]);
        for (i, name) in names.iter().enumerate() {
            let slot = &mut slots[name_slot(name)];
            *slot = if *slot == 0 && i + 1 < AMBIGUOUS as usize { i as u8 + 1 } else { AMBIGUOUS };
        }
        let mut d = ObjectDecoder {
            names,
            slots,
            types,
            vals: vec![Val::Null; n],
            owned: vec![String::new(); n],
            builders: Vec::new(),
            key_scratch: String::new(),
            layout: Vec::new(),
        };
        d.builders = d.new_builders(0);
        d
    }

    fn new_builders(&self, capacity: usize) -> Vec<Builder> {
        self.types
            .iter()
            .map(|t| match t {
                FieldType::String => Builder::Str(StringBuilder::with_capacity(capacity, capacity * 16)),
                FieldType::Long | FieldType::Timestamp => Builder::I64(Int64Builder::with_capacity(capacity)),
                FieldType::Double => Builder::F64(Float64Builder::with_capacity(capacity)),
                FieldType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
            })
            .collect()
    }

    /// Starts a batch of about `rows` rows.
    pub fn reserve(&mut self, rows: usize) {
        self.builders = self.new_builders(rows);
    }

    /// Decodes one record into a row; on error nothing is appended.
    pub fn push(&mut self, rec: &[u8]) -> Res<()> {
        let text = std::str::from_utf8(rec).map_err(|e| format!("not UTF-8: {e}"))?;
        self.vals.iter_mut().for_each(|v| *v = Val::Null);
        let mut c = Cursor { s: text, b: text.as_bytes(), i: 0 };
        c.ws();
        if c.peek() != Some(b'{') {
            return c.err("expected a JSON object");
        }
        c.i += 1;
        c.ws();
        if c.peek() == Some(b'}') {
            c.i += 1;
        } else {
            let mut member = 0;
            loop {
                if c.peek() != Some(b'"') {
                    return c.err("expected a field name");
                }
                let key_at = c.i;
                let field = match self.layout.get(member) {
                    // The expected key, quotes included: a string without escapes, so these
                    // bytes are the whole key.
                    Some(k) if k.starts(&c.b[key_at..]) => {
                        c.i += k.quoted.len();
                        k.field
                    }
                    _ => {
                        self.layout.truncate(member);
                        match c.string(&mut self.key_scratch)? {
                            Some((s, e)) => {
                                let field = self.field_index(&c.b[s..e]);
                                if member < MAX_LAYOUT && self.layout.len() == member {
                                    self.layout.push(LayoutKey::new(&c.b[s - 1..e + 1], field));
                                }
                                field
                            }
                            None => self.field_index(self.key_scratch.as_bytes()),
                        }
                    }
                };
                member += 1;
                c.ws();
                c.expect(b':', "expected `:`")?;
                c.ws();
                match field {
                    Some(f) => self.value(&mut c, f).map_err(|e| {
                        format!("field `{}` (at byte {key_at}): {e}", String::from_utf8_lossy(&self.names[f]))
                    })?,
                    None => c.skip_value(&mut self.key_scratch)?,
                }
                c.ws();
                match c.peek() {
                    Some(b',') => {
                        c.i += 1;
                        c.ws();
                    }
                    Some(b'}') => {
                        c.i += 1;
                        break;
                    }
                    _ => return c.err("expected `,` or `}`"),
                }
            }
        }
        c.ws();
        if c.i != c.b.len() {
            return c.err("unexpected data after the object");
        }
        for ((b, v), owned) in self.builders.iter_mut().zip(&self.vals).zip(&self.owned) {
            match (b, *v) {
                (Builder::Str(b), Val::Span(s, e)) => b.append_value(&text[s as usize..e as usize]),
                (Builder::Str(b), Val::Owned) => b.append_value(owned),
                (Builder::I64(b), Val::I64(x)) => b.append_value(x),
                (Builder::F64(b), Val::F64(x)) => b.append_value(x),
                (Builder::Bool(b), Val::Bool(x)) => b.append_value(x),
                (Builder::Str(b), _) => b.append_null(),
                (Builder::I64(b), _) => b.append_null(),
                (Builder::F64(b), _) => b.append_null(),
                (Builder::Bool(b), _) => b.append_null(),
            }
        }
        Ok(())
    }

    fn field_index(&self, key: &[u8]) -> Option<usize> {
        match self.slots[name_slot(key)] {
            0 => None,
            AMBIGUOUS => self.names.iter().position(|n| **n == *key),
            f => Some(f as usize - 1).filter(|&f| *self.names[f] == *key),
        }
    }

    /// The value of declared field `f` at the cursor, converted to its type.
    fn value(&mut self, c: &mut Cursor, f: usize) -> Res<()> {
        let t = self.types[f];
        let v = match c.peek() {
            Some(b'n') => {
                c.literal(b"null")?;
                Val::Null
            }
            Some(b'"') => {
                let owned = &mut self.owned[f];
                let span = c.string(owned)?;
                let s = match span {
                    Some((s, e)) => c.text(s, e),
                    None => owned.as_str(),
                };
                match t {
                    FieldType::String => match span {
                        Some((s, e)) => Val::Span(s as u32, e as u32),
                        None => Val::Owned,
                    },
                    FieldType::Long => {
                        Val::I64(s.trim().parse().map_err(|_| format!("expected an integer, found \"{s}\""))?)
                    }
                    FieldType::Double => Val::F64(
                        s.trim()
                            .parse()
                            .ok()
                            .filter(|x: &f64| x.is_finite())
                            .ok_or_else(|| format!("expected a number, found \"{s}\""))?,
                    ),
                    FieldType::Timestamp => Val::I64(
                        weir_crds::parse_timestamp_millis(s)
                            .ok_or_else(|| format!("expected epoch milliseconds or an RFC 3339 time, found \"{s}\""))?,
                    ),
                    FieldType::Boolean => return Err(format!("expected true or false, found \"{s}\"")),
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let (text, integer) = c.number()?;
                match t {
                    FieldType::Long | FieldType::Timestamp if integer => {
                        Val::I64(text.parse().map_err(|_| format!("{text} does not fit a 64-bit integer"))?)
                    }
                    FieldType::Long | FieldType::Timestamp => {
                        return Err(format!("expected an integer, found {text}"));
                    }
                    // A double too large for 64 bits would be infinity, and every sum with it.
                    FieldType::Double => Val::F64(
                        text.parse()
                            .ok()
                            .filter(|x: &f64| x.is_finite())
                            .ok_or_else(|| format!("{text} is out of a double's range"))?,
                    ),
                    FieldType::String => return Err(format!("expected a string, found {text}")),
                    FieldType::Boolean => return Err(format!("expected true or false, found {text}")),
                }
            }
            Some(b't' | b'f') if t == FieldType::Boolean => {
                let yes = c.peek() == Some(b't');
                c.literal(if yes { b"true" } else { b"false" })?;
                Val::Bool(yes)
            }
            Some(b'{' | b'[' | b't' | b'f') => {
                let kind = match c.peek() {
                    Some(b'{') => "an object",
                    Some(b'[') => "an array",
                    _ => "a boolean",
                };
                return Err(format!("expected {}, found {kind}", type_name(t)));
            }
            _ => return c.err("expected a JSON value"),
        };
        self.vals[f] = v;
        Ok(())
    }

    /// The columns decoded since the last call, in field order; starts a new batch.
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Str(b) => Arc::new(b.finish()),
                    Builder::I64(b) => Arc::new(b.finish()),
                    Builder::F64(b) => Arc::new(b.finish()),
                    Builder::Bool(b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "a string",
        FieldType::Long => "an integer",
        FieldType::Double => "a number",
        FieldType::Boolean => "true or false",
        FieldType::Timestamp => "epoch milliseconds or an RFC 3339 time",
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::Value as J;

    use super::*;

    const FIELDS: [(&str, FieldType); 5] = [
        ("card_id", FieldType::String),
        ("n", FieldType::Long),
        ("amount", FieldType::Double),
        ("ok", FieldType::Boolean),
        ("ts", FieldType::Timestamp),
    ];

    #[derive(Debug)]
    enum Out {
        Null,
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }

    impl PartialEq for Out {
        fn eq(&self, other: &Out) -> bool {
            match (self, other) {
                // serde_json's default float parsing is not always correctly rounded.
                (Out::F(a), Out::F(b)) => a == b || (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                (Out::S(a), Out::S(b)) => a == b,
                (Out::I(a), Out::I(b)) => a == b,
                (Out::B(a), Out::B(b)) => a == b,
                (Out::Null, Out::Null) => true,
                _ => false,
            }
        }
    }

    /// What a record must decode to, derived from serde_json's reading of it (the reference
    /// for JSON validity) and the conversion rules in the module documentation.
    fn expected(text: &str) -> Option<Vec<Out>> {
        let J::Object(m) = serde_json::from_str::<J>(text).ok()? else { return None };
        FIELDS
            .iter()
            .map(|(name, t)| {
                Some(match (m.get(*name), t) {
                    (None | Some(J::Null), _) => Out::Null,
                    (Some(J::String(s)), FieldType::String) => Out::S(s.clone()),
                    (Some(J::Number(x)), FieldType::Long | FieldType::Timestamp) => Out::I(x.as_i64()?),
                    (Some(J::String(s)), FieldType::Long) => Out::I(s.trim().parse().ok()?),
                    (Some(J::String(s)), FieldType::Timestamp) => Out::I(weir_crds::parse_timestamp_millis(s)?),
                    (Some(J::Number(x)), FieldType::Double) => Out::F(x.to_string().parse().ok()?),
                    (Some(J::String(s)), FieldType::Double) => {
                        Out::F(s.trim().parse().ok().filter(|x: &f64| x.is_finite())?)
                    }
                    (Some(J::Bool(b)), FieldType::Boolean) => Out::B(*b),
                    _ => return None,
                })
            })
            .collect()
    }

    fn decode(text: &[u8]) -> Result<Vec<Out>, String> {
        decode_with(&mut ObjectDecoder::new(FIELDS), text)
    }

    /// One record through a decoder that may have seen others (and learnt their key order).
    fn decode_with(d: &mut ObjectDecoder, text: &[u8]) -> Result<Vec<Out>, String> {
        d.reserve(1);
        d.push(text)?;
        let cols = d.finish();
        Ok(cols
            .iter()
            .map(|c| {
                if c.is_null(0) {
                    return Out::Null;
                }
                let any = c.as_any();
                if let Some(a) = any.downcast_ref::<StringArray>() {
                    Out::S(a.value(0).to_string())
                } else if let Some(a) = any.downcast_ref::<Int64Array>() {
                    Out::I(a.value(0))
                } else if let Some(a) = any.downcast_ref::<Float64Array>() {
                    Out::F(a.value(0))
                } else {
                    Out::B(any.downcast_ref::<BooleanArray>().unwrap().value(0))
                }
            })
            .collect())
    }

    fn ws(rng: &mut StdRng, out: &mut String) {
        for _ in 0..rng.random_range(0..3) {
            out.push([' ', '\t', '\n', '\r'][rng.random_range(0..4)]);
        }
    }

    /// A JSON string with some characters escaped at random.
    fn string(rng: &mut StdRng, s: &str, out: &mut String) {
        out.push('"');
        for ch in s.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if rng.random_bool(0.1) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{:04X}", u));
                    }
                }
                '/' if rng.random_bool(0.5) => out.push_str("\\/"),
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn random_text(rng: &mut StdRng) -> String {
        let alphabet = ['a', 'Z', '7', ' ', '"', '\\', '/', '\n', 'é', '€', '😀', ':', ',', '{', ']', '\u{1}'];
        (0..rng.random_range(0..12)).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
    }

    /// Any JSON value, nested up to `depth`.
    fn value(rng: &mut StdRng, depth: u32, out: &mut String) {
        match rng.random_range(0..if depth == 0 { 5 } else { 7 }) {
            0 => out.push_str("null"),
            1 => out.push_str(if rng.random_bool(0.5) { "true" } else { "false" }),
            2 => out.push_str(&rng.random_range(-1_000_000i64..1_000_000).to_string()),
            3 => out.push_str(&format!("{:e}", rng.random_range(-1e6..1e6f64))),
            4 => {
                let t = random_text(rng);
                string(rng, &t, out)
            }
            5 => {
                out.push('[');
                for i in 0..rng.random_range(0..4) {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(rng, out);
                    value(rng, depth - 1, out);
                    ws(rng, out);
                }
                out.push(']');
            }
            _ => object(rng, depth - 1, out, false),
        }
    }

    /// An object with noise fields, and the declared fields with values of any kind.
    fn object(rng: &mut StdRng, depth: u32, out: &mut String, declared: bool) {
        let mut members: Vec<String> = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            let mut m = String::new();
            let name = format!("x{}", random_text(rng));
            string(rng, &name, &mut m);
            m.push(':');
            value(rng, depth, &mut m);
            members.push(m);
        }
        if declared {
            for (name, t) in FIELDS {
                if rng.random_bool(0.1) {
                    continue;
                }
                let mut m = String::new();
                string(rng, name, &mut m);
                ws(rng, &mut m);
                m.push(':');
                ws(rng, &mut m);
                match (rng.random_range(0..6), t) {
                    (0, _) => value(rng, 2, &mut m),
                    (_, FieldType::String) => {
                        let t = random_text(rng);
                        string(rng, &t, &mut m)
                    }
                    (1, FieldType::Long | FieldType::Timestamp) => {
                        m.push_str(&format!("\"{}\"", rng.random_range(-5_000i64..5_000)))
                    }
                    (2, FieldType::Timestamp) => m.push_str("\"2026-11-25T10:00:00.250+01:00\""),
                    (_, FieldType::Long | FieldType::Timestamp) => m.push_str(&rng.random::<i64>().to_string()),
                    (1, FieldType::Double) => m.push_str(&format!("\"{}\"", rng.random_range(-1e3..1e3f64))),
                    (_, FieldType::Double) => m.push_str(&rng.random_range(-1e9..1e9f64).to_string()),
                    (_, FieldType::Boolean) => m.push_str(if rng.random_bool(0.5) { "true" } else { "false" }),
                }
                members.push(m);
            }
        }
        // Shuffle so declared and other fields interleave.
        for i in (1..members.len()).rev() {
            members.swap(i, rng.random_range(0..=i));
        }
        out.push('{');
        ws(rng, out);
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
                ws(rng, out);
            }
            out.push_str(m);
            ws(rng, out);
        }
        out.push('}');
    }

    #[test]
    fn agrees_with_serde_json_on_random_and_mutated_records() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut valid, mut rejected) = (0, 0);
        // One decoder throughout, as in a task: each odd case is the even one before it broken
        // somewhere, so the key order the decoder learnt from a record is tried on a look-alike
        // that differs after any key, inside one, or in its quotes.
        let mut d = ObjectDecoder::new(FIELDS);
        let mut previous = String::new();
        for case in 0..20_000 {
            let mut text = String::new();
            if case % 2 == 0 {
                ws(&mut rng, &mut text);
                object(&mut rng, 3, &mut text, true);
                ws(&mut rng, &mut text);
                previous = text.clone();
            } else {
                text = previous.clone();
            }
            let mut bytes = text.into_bytes();
            if case % 2 == 1 {
                // Break it somewhere: delete, insert (a raw tab or control character too, which
                // only whitespace may hold) or truncate (ASCII only, so UTF-8 holds).
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, b"{}[],:\"\\ 0e.-tnx\t\x01"[rng.random_range(0..18)]),
                    _ => bytes.truncate(at),
                }
            }
            let Ok(text) = String::from_utf8(bytes) else { continue };
            // Valid JSON that serde_json cannot represent (a huge exponent) proves nothing.
            if serde_json::from_str::<J>(&text).is_err_and(|e| e.to_string().contains("out of range")) {
                continue;
            }
            let want = expected(&text);
            let got = decode_with(&mut d, text.as_bytes());
            assert_eq!(got, decode(text.as_bytes()), "record {text}: a fresh decoder agrees");
            match (&want, &got) {
                (Some(w), Ok(g)) => {
                    assert_eq!(g, w, "record {text}");
                    valid += 1;
                }
                (None, Err(_)) => rejected += 1,
                _ => panic!("record {text}: expected {want:?}, decoded {got:?}"),
            }
        }
        assert!(valid > 2_000 && rejected > 2_000, "both outcomes exercised: {valid} valid, {rejected} rejected");
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = decode(br#"{"card_id": "c1", "n": 1.5}"#).unwrap_err();
        assert!(e.contains("field `n`") && e.contains("expected an integer, found 1.5"), "{e}");
        let e = decode(br#"{"card_id": "c1" "n": 1}"#).unwrap_err();
        assert_eq!(e, "at byte 17: expected `,` or `}`, found `\"`");
        assert!(decode(b"{\"card_id\": \"\xff\"}").unwrap_err().starts_with("not UTF-8"));
        assert!(decode(br#"{"x": "\ud800"}"#).unwrap_err().contains("low surrogate"));
        assert!(decode(br#"[1]"#).unwrap_err().contains("expected a JSON object"));
        let e = decode(b"{\"card_id\": \"a\tb\"}").unwrap_err();
        assert!(e.starts_with("field `card_id` (at byte 1): at byte 14: control character"), "{e}");
        assert!(decode(b"{\"x\": \"a\\n\x01\"}").unwrap_err().contains("control character"));
        assert!(decode(br#"{"a":1} {"a":2}"#).unwrap_err().contains("unexpected data after the object"));
        let deep = format!("{{\"x\": {}{}}}", "[".repeat(1_000), "]".repeat(1_000));
        assert!(decode(deep.as_bytes()).unwrap_err().contains("nested too deeply"));
    }

    #[test]
    fn a_failed_record_appends_nothing() {
        let mut d = ObjectDecoder::new(FIELDS);
        d.reserve(3);
        d.push(br#"{"card_id": "a", "n": 1}"#).unwrap();
        d.push(br#"{"card_id": "b", "n": "x"}"#).unwrap_err();
        d.push(br#"{"n": 3, "card_id": "c\"d"}"#).unwrap();
        let cols = d.finish();
        let ids = cols[0].as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), [Some("a"), Some("c\"d")]);
        assert!(cols.iter().all(|c| c.len() == 2));
    }

    #[test]
    fn finds_every_declared_field_among_many_and_ignores_look_alikes() {
        // 300 declared names: more than the slot table can number, with many sharing a slot.
        let names: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
        let mut d = ObjectDecoder::new(names.iter().map(|n| (n.as_str(), FieldType::Long)));
        d.reserve(1);
        // Every declared field, in reverse order, plus undeclared names of the same shapes.
        let mut rec = String::from("{");
        for i in (0..300).rev() {
            rec.push_str(&format!("\"f{i}\": {i}, \"g{i}\": -1, \"f{i}x\": -2, "));
        }
        rec.push_str("\"\": 0}");
        d.push(rec.as_bytes()).unwrap();
        let cols = d.finish();
        for (i, c) in cols.iter().enumerate() {
            assert_eq!(c.as_any().downcast_ref::<Int64Array>().unwrap().value(0), i as i64, "field f{i}");
        }
    }

    #[test]
    fn a_learnt_key_order_never_decides_a_different_key() {
        // Each record after the first shares the start of a key with the one before it: a key
        // that the expected one is a prefix of, one that is a prefix of the expected one, one
        // with an escape, and the long and short keys that the 16-byte comparison splits.
        let mut d = ObjectDecoder::new(FIELDS);
        let records: [(&[u8], Out); 7] = [
            (br#"{"n": 1, "card_id": "a"}"#, Out::I(1)),
            (br#"{"n2": 7, "n": 2}"#, Out::I(2)),
            (br#"{"n": 3, "n2": 7}"#, Out::I(3)),
            (br#"{"n": 4}"#, Out::I(4)),
            (br#"{"a_rather_long_name_past_16": 0, "n": 5}"#, Out::I(5)),
            (br#"{"a_rather_long_name_past_17": 0, "n": 6}"#, Out::I(6)),
            (br#"{"a_rather_long_name_past_16": 0, "n"  : 7, "m": 1}"#, Out::I(7)),
        ];
        for (rec, n) in records {
            let got = decode_with(&mut d, rec).unwrap();
            assert_eq!(got[1], n, "{}", String::from_utf8_lossy(rec));
            assert_eq!(got, decode(rec).unwrap(), "{}: a fresh decoder agrees", String::from_utf8_lossy(rec));
        }
    }
}
