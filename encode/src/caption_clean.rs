//! LlamaGen's caption cleaning before FLAN-T5 (`language/t5.py`, `T5Embedder.clean_caption`,
//! itself PixArt's and DeepFloyd IF's): lower case, URLs, HTML, nicknames, CJK, dash and quote
//! styles, IP addresses, ids, file names, shop phrases and stray punctuation removed. LlamaGen
//! applies it twice ([`clean_caption_twice`]); the embeddings a model was trained on depend on
//! it, so it is reproduced step for step and checked against LlamaGen's own output on hostile
//! captions (`tests/t5_parity.rs`).
//!
//! Not reproduced: ftfy's mojibake repair (text decoded with the wrong codec); its other fixes
//! that apply to clean text (NFC, full-width forms, ligatures, curly quotes, line breaks,
//! control characters) are.

use std::sync::LazyLock;

use fancy_regex::Regex;
use unicode_normalization::UnicodeNormalization as _;

/// The caption as LlamaGen's `T5Embedder.text_preprocessing` hands it to the tokenizer.
pub fn clean_caption_twice(caption: &str) -> String {
    clean_caption(&clean_caption(caption))
}

struct Step {
    pattern: Regex,
    replacement: &'static str,
}

fn step(pattern: &str, replacement: &'static str) -> Step {
    Step {
        // The patterns are constants of this file; a typo fails every test at once.
        pattern: Regex::new(pattern).expect("a valid caption-cleaning pattern"),
        replacement,
    }
}

fn apply(steps: &[Step], mut text: String) -> String {
    for s in steps {
        // Only the look-ahead patterns run on fancy-regex's backtracking engine, which gives
        // up on pathological input (its backtrack limit) where `replace_all` would panic; a
        // caption like that keeps its text for that step.
        if let Ok(replaced) = s.pattern.try_replacen(&text, 0, s.replacement) {
            text = replaced.into_owned();
        }
    }
    text
}

const URL_TAIL: &str = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)))";

/// Before the HTML is stripped.
static BEFORE_HTML: LazyLock<Vec<Step>> = LazyLock::new(|| {
    vec![
        step("<person>", "person"),
        step(
            &format!(r"\b((?:https?:(?:/{{1,3}}|[a-zA-Z0-9%])|{URL_TAIL}"),
            "",
        ),
        step(
            &format!(r"\b((?:www:(?:/{{1,3}}|[a-zA-Z0-9%])|{URL_TAIL}"),
            "",
        ),
    ]
});

/// Between the HTML and the dash/underscore count.
static AFTER_HTML: LazyLock<Vec<Step>> = LazyLock::new(|| {
    vec![
        step(r"@[\w\d]+\b", ""),
        // CJK strokes, katakana extensions, enclosed CJK, CJK compatibility, ideographs.
        step(r"[\x{31c0}-\x{31ef}]+", ""),
        step(r"[\x{31f0}-\x{31ff}]+", ""),
        step(r"[\x{3200}-\x{32ff}]+", ""),
        step(r"[\x{3300}-\x{33ff}]+", ""),
        step(r"[\x{3400}-\x{4dbf}]+", ""),
        step(r"[\x{4dc0}-\x{4dff}]+", ""),
        step(r"[\x{4e00}-\x{9fff}]+", ""),
        step(
            r"[\x{002D}\x{058A}\x{05BE}\x{1400}\x{1806}\x{2010}-\x{2015}\x{2E17}\x{2E1A}\x{2E3A}\x{2E3B}\x{2E40}\x{301C}\x{3030}\x{30A0}\x{FE31}\x{FE32}\x{FE58}\x{FE63}\x{FF0D}]+",
            "-",
        ),
        step("[`´«»“”¨]", "\""),
        step("[‘’]", "'"),
        step("&quot;?", ""),
        step("&amp", ""),
        step(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),
        step(r"\d:\d\d\s+$", ""),
        step(r"\\n", " "),
        step(r"#\d{1,3}\b", ""),
        step(r"#\d{5,}\b", ""),
        step(r"\b\d{6,}\b", ""),
        step(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", ""),
        step(r#"["']{2,}"#, "\""),
        step(r"[\.]{2,}", " "),
        step(r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]{1,}", " "),
        step(r"\s+\.\s+", " "),
    ]
});

static DASH_OR_UNDERSCORE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:\-|\_)").expect("a valid pattern"));

/// After `basic_clean`.
static AFTER_BASIC: LazyLock<Vec<Step>> = LazyLock::new(|| {
    vec![
        step(r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),
        step(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),
        step(r"\b\d+[a-zA-Z]+\d+\b", ""),
        step(r"(worldwide\s+)?(free\s+)?shipping", ""),
        step(r"(free\s)?download(\sfree)?", ""),
        step(r"\bclick\b\s(?:for|on)\s\w+", ""),
        step(
            r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?",
            "",
        ),
        step(r"\bpage\s+\d+\b", ""),
        step(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
        step(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),
        step(r"\b\s+\:\s+", ": "),
        step(r"(\D[,\./])\b", "${1} "),
        step(r"\s+", " "),
        step(r#"^["']([\w\W]+)["']$"#, "${1}"),
        step(r"^['\_,\-\:;]", ""),
        step(r"['\_,\-\:\-\+]$", ""),
        step(r"^\.\S+$", ""),
    ]
});

/// One pass of `clean_caption`.
pub fn clean_caption(caption: &str) -> String {
    let text = py_strip(&unquote_plus(caption)).to_lowercase();
    let text = apply(&BEFORE_HTML, text);
    let text = html_text(&text);
    let mut text = apply(&AFTER_HTML, text);
    if DASH_OR_UNDERSCORE.find_iter(&text).count() > 3 {
        text = DASH_OR_UNDERSCORE.replace_all(&text, " ").into_owned();
    }
    let text = basic_clean(&text);
    py_strip(&apply(&AFTER_BASIC, text)).to_string()
}

/// Python's `str.strip()`: its white space is `str.isspace`, which also counts the ASCII
/// separators U+001C..U+001F.
fn py_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// `urllib.parse.unquote_plus`: `+` is a space and each run of `%XX` escapes is decoded as
/// UTF-8, invalid bytes becoming U+FFFD; a `%` not followed by two hex digits stays.
fn unquote_plus(text: &str) -> String {
    let text = text.replace('+', " ");
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut run = Vec::new();
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            run.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        if !run.is_empty() {
            out.push_str(&String::from_utf8_lossy(&run));
            run.clear();
        }
        // Copy up to the next '%' (always a char boundary: '%' is ASCII).
        let next = bytes[i + 1..]
            .iter()
            .position(|&b| b == b'%')
            .map_or(bytes.len(), |p| i + 1 + p);
        out.push_str(&text[i..next]);
        i = next;
    }
    out.push_str(&String::from_utf8_lossy(&run));
    out
}

/// `BeautifulSoup(text, "html.parser").text`: markup removed (tags, comments, declarations,
/// processing instructions), character references decoded; a `<` that does not open markup
/// is text.
fn html_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let opens = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '!' || c == '?');
        if !opens {
            out.push('<');
            rest = after;
            continue;
        }
        let end = if after.starts_with("!--") {
            after.find("-->").map(|p| p + 3)
        } else {
            after.find('>').map(|p| p + 1)
        };
        match end {
            Some(end) => rest = &after[end..],
            // An unclosed tag at the end: html.parser keeps it as text.
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    html_escape::decode_html_entities(&out).into_owned()
}

/// `basic_clean`: ftfy's fixes for clean text, HTML unescaped twice, stripped.
fn basic_clean(text: &str) -> String {
    let fixed = ftfy_subset(text);
    let once = html_escape::decode_html_entities(&fixed).into_owned();
    let twice = html_escape::decode_html_entities(&once).into_owned();
    py_strip(&twice).to_string()
}

/// What `ftfy.fix_text` does to text that is not mojibake: line breaks to `\n`, control
/// characters removed, ligatures split, full-width forms narrowed, curly quotes straightened,
/// NFC.
fn ftfy_subset(text: &str) -> String {
    let text = text
        .replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' => {}
            '\u{feff}' | '\u{fff9}'..='\u{fffc}' => {}
            '\u{fb00}'..='\u{fb06}' => out.extend(c.to_string().nfkc()),
            '\u{ff01}'..='\u{ff5e}' => {
                out.push(char::from_u32(c as u32 - 0xfee0).unwrap_or(c));
            }
            '\u{3000}' => out.push(' '),
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => out.push('\''),
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' => out.push('"'),
            _ => out.push(c),
        }
    }
    out.nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquote_plus_decodes_runs_and_keeps_stray_percents() {
        assert_eq!(unquote_plus("a+b%20c"), "a b c");
        assert_eq!(unquote_plus("caf%C3%A9"), "café");
        assert_eq!(unquote_plus("100% sure %zz %4"), "100% sure %zz %4");
        assert_eq!(unquote_plus("%FF!"), "\u{fffd}!");
    }

    #[test]
    fn html_text_drops_markup_and_keeps_lone_brackets() {
        assert_eq!(html_text("<p>a <b>b</b></p>"), "a b");
        assert_eq!(html_text("1 < 2 &amp; 3"), "1 < 2 & 3");
        assert_eq!(html_text("x <!-- c --> y"), "x  y");
        assert_eq!(html_text("open <tag"), "open <tag");
    }

    #[test]
    fn cleaning_follows_llamagen() {
        assert_eq!(
            clean_caption_twice("  Two DOGS playing in the snow  "),
            "two dogs playing in the snow"
        );
        assert_eq!(
            clean_caption_twice("this-is-my-cute-cat_with_many_dashes"),
            "this is my cute cat with many dashes"
        );
        assert_eq!(
            clean_caption_twice("\"A quoted caption\""),
            "a quoted caption"
        );
        assert_eq!(clean_caption_twice("ＡＢＣ ﬁne"), "abc fine");
    }

    #[test]
    fn hostile_captions_never_panic() {
        // Long runs that make backtracking engines work hard, and odd bytes.
        let dots = format!("{}@", "a.".repeat(20_000));
        let dashes = "-_".repeat(10_000);
        let percent = "%".repeat(5_000) + "%e2%82";
        for caption in [
            dots.as_str(),
            dashes.as_str(),
            percent.as_str(),
            "<",
            "&#",
            "\u{0}",
        ] {
            let _ = clean_caption_twice(caption);
        }
    }
}
