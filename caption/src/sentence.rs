//! The short caption: the first sentence of the long one. The paper notes that LLaVA's first
//! sentence "is always a summary description of its image" and trains on it as the short
//! caption, so the split has to be right on the text LLaVA writes: abbreviations ("e.g.",
//! "Mr.", "approx."), decimals and versions ("3.5", "v1.2"), initials ("J. R. R."), ellipses,
//! quotes and brackets closing after the full stop, and a reply cut off by `max_tokens`.

/// Words that end in a full stop without ending the sentence (compared in lower case, without
/// the stop).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "e.g", "i.e",
    "approx", "appr", "no", "nos", "fig", "figs", "inc", "ltd", "co", "corp", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "a.m", "p.m", "u.s", "u.k",
    "u.s.a", "e.u", "dept", "est", "vol", "ca", "cf", "al", "gen", "col", "capt", "lt", "sgt",
    "rev", "hon", "ave", "blvd", "rd", "min", "max", "cm", "mm", "km", "oz", "lb", "lbs",
];

/// Characters that may follow the terminator and still belong to the sentence.
const CLOSERS: &[char] = &['"', '\'', ')', ']', '}', '»', '”', '’'];

/// What [`first_sentence`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstSentence<'a> {
    /// A sentence ending in `.`, `!`, `?` or `…` (with its closing quotes and brackets).
    Complete(&'a str),
    /// The text has no sentence end: if the reply was finished this is the whole caption (LLaVA
    /// sometimes answers with a single phrase), if it was cut off it is a fragment.
    Unterminated(&'a str),
    /// Nothing but white space.
    Empty,
}

/// The first sentence of `text`, trimmed. A paragraph break (a blank line) also ends a
/// sentence, as does a line break after a colon-free heading-like line with a terminator.
pub fn first_sentence(text: &str) -> FirstSentence<'_> {
    let text = text.trim_start();
    if text.trim().is_empty() {
        return FirstSentence::Empty;
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if c == '\n' {
            // A blank line ends the paragraph and so the sentence.
            let rest = &text[at..];
            let blank = rest
                .chars()
                .skip(1)
                .take_while(|c| c.is_whitespace())
                .any(|c| c == '\n');
            if blank {
                let sentence = text[..at].trim_end();
                return if ends_in_terminator(sentence) {
                    FirstSentence::Complete(sentence)
                } else {
                    FirstSentence::Unterminated(sentence)
                };
            }
        }
        if matches!(c, '.' | '!' | '?' | '…') {
            // Runs of terminators ("?!", "...") end together.
            let mut j = i;
            while j + 1 < chars.len() && matches!(chars[j + 1].1, '.' | '!' | '?' | '…') {
                j += 1;
            }
            let mut k = j + 1;
            while k < chars.len() && CLOSERS.contains(&chars[k].1) {
                k += 1;
            }
            let end = chars.get(k).map_or(text.len(), |&(p, _)| p);
            if is_boundary(text, &chars, i, j, k) {
                return FirstSentence::Complete(text[..end].trim_end());
            }
            i = k;
            continue;
        }
        i += 1;
    }
    let whole = text.trim_end();
    if ends_in_terminator(whole) {
        FirstSentence::Complete(whole)
    } else {
        FirstSentence::Unterminated(whole)
    }
}

fn ends_in_terminator(s: &str) -> bool {
    s.trim_end_matches(CLOSERS).ends_with(['.', '!', '?', '…'])
}

/// Whether the terminator run `chars[i..=j]`, followed by closers up to `k`, ends a sentence.
fn is_boundary(text: &str, chars: &[(usize, char)], i: usize, j: usize, k: usize) -> bool {
    // The end of the text.
    let Some(&(_, next)) = chars.get(k) else {
        return true;
    };
    // "3.5", "v1.2", "example.com", "e.g." inside a word: no space after the stop.
    if !next.is_whitespace() {
        return false;
    }
    let only_stops = chars[i..=j].iter().all(|&(_, c)| c == '.');
    // What comes next: the first non-space character.
    let following = chars[k..]
        .iter()
        .map(|&(_, c)| c)
        .find(|c| !c.is_whitespace());
    let Some(following) = following else {
        return true;
    };
    // "?" and "!" end a sentence whatever follows, except a lower-case continuation
    // ("Is it a cat? or a dog?" is rare in captions; a lower-case word means one sentence).
    if !only_stops {
        return !following.is_lowercase();
    }
    // An ellipsis ends a sentence only before a capital.
    if j > i && !following.is_uppercase() {
        return false;
    }
    // A lower-case word, a digit or a comma after the stop continues the sentence
    // ("approx. five", "No. 5", "etc., and").
    if following.is_lowercase()
        || following.is_ascii_digit()
        || matches!(following, ',' | ';' | ':')
    {
        return false;
    }
    // The word the stop ends.
    let start = chars[..i]
        .iter()
        .rposition(|&(_, c)| c.is_whitespace() || matches!(c, '(' | '"' | '“' | '\''))
        .map_or(0, |p| p + 1);
    let word: String = text[chars.get(start).map_or(0, |&(p, _)| p)..chars[i].0].to_lowercase();
    if word.is_empty() {
        return true;
    }
    // Initials: a single letter ("J. R. R. Tolkien").
    let letters = word.chars().filter(|c| c.is_alphabetic()).count();
    if letters == 1 && word.chars().all(|c| c.is_alphabetic()) {
        return false;
    }
    !ABBREVIATIONS.contains(&word.as_str())
}

#[cfg(test)]
mod tests {
    use super::FirstSentence::{Complete, Empty, Unterminated};
    use super::*;

    #[test]
    fn ordinary_llava_replies() {
        assert_eq!(
            first_sentence(
                "The image features a cat sitting on a wooden table. The cat is orange and white."
            ),
            Complete("The image features a cat sitting on a wooden table.")
        );
        assert_eq!(
            first_sentence("  A dog runs on the beach!  It looks happy."),
            Complete("A dog runs on the beach!")
        );
        assert_eq!(
            first_sentence("Is this a painting? It appears so."),
            Complete("Is this a painting?")
        );
        assert_eq!(first_sentence("A red bus."), Complete("A red bus."));
    }

    #[test]
    fn abbreviations_decimals_and_initials_do_not_end_it() {
        assert_eq!(
            first_sentence(
                "Mr. Smith stands next to approx. five people, e.g. his family. Behind them."
            ),
            Complete("Mr. Smith stands next to approx. five people, e.g. his family.")
        );
        assert_eq!(
            first_sentence("A sign reads 3.5 km to St. Louis and No. 5 road. Then trees."),
            Complete("A sign reads 3.5 km to St. Louis and No. 5 road.")
        );
        assert_eq!(
            first_sentence("A book by J. R. R. Tolkien lies on the desk. It is open."),
            Complete("A book by J. R. R. Tolkien lies on the desk.")
        );
        assert_eq!(
            first_sentence(
                "The U.S. flag waves at 5 p.m. near the shore, etc., under a sky. Next."
            ),
            Complete("The U.S. flag waves at 5 p.m. near the shore, etc., under a sky.")
        );
        assert_eq!(
            first_sentence("A website, example.com, is shown. More."),
            Complete("A website, example.com, is shown.")
        );
    }

    #[test]
    fn quotes_brackets_and_ellipses() {
        assert_eq!(
            first_sentence("A poster says \"Stay calm.\" Below it, a chair."),
            Complete("A poster says \"Stay calm.\"")
        );
        assert_eq!(
            first_sentence("A man (wearing a hat.) Walks away."),
            Complete("A man (wearing a hat.)")
        );
        assert_eq!(
            first_sentence("A road leads on... and on... into the hills. Then."),
            Complete("A road leads on... and on... into the hills.")
        );
        assert_eq!(
            first_sentence("Wait... The scene is dark. Yes."),
            Complete("Wait...")
        );
        assert_eq!(
            first_sentence("What a view?! The sea is calm."),
            Complete("What a view?!")
        );
    }

    #[test]
    fn paragraphs_fragments_and_empty_replies() {
        assert_eq!(
            first_sentence("A kitchen with white cabinets\n\nThe floor is tiled."),
            Unterminated("A kitchen with white cabinets")
        );
        assert_eq!(
            first_sentence("A kitchen.\n\nThe floor is tiled."),
            Complete("A kitchen.")
        );
        assert_eq!(
            first_sentence("A line that continues\non the next line. End."),
            Complete("A line that continues\non the next line.")
        );
        assert_eq!(
            first_sentence("The image shows a large crowd of people gathered in"),
            Unterminated("The image shows a large crowd of people gathered in")
        );
        assert_eq!(first_sentence(" \n\t "), Empty);
        assert_eq!(
            first_sentence("Ünïcödé café. Zweiter Satz."),
            Complete("Ünïcödé café.")
        );
    }
}
