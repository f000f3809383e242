//! Substitutions (SPEC 4.2): `$(name)` placeholders in subject, text and html, and the size
//! of an expansion computed *without* building it (SPEC 6.3 "API"), so a request whose
//! substitutions would blow a body up to gigabytes costs one scan of its templates.
//! Invariant: [`Placeholders::size`] is exactly `substitute(..).len()` for the same keys.

use std::collections::{BTreeMap, HashMap};

/// Substitution keys as the request wrote them, normalised: `$(name)`, `{{name}}` and
/// `name` are the same key. `unsubscribe` is reserved. A key holding `$(` or `)` can never
/// be a placeholder's name (the name ends at the first `)`, and a name holding `$(` would
/// make one placeholder overlap another), so it is dropped: that keeps where placeholders
/// are independent of which names are known, which [`Placeholders::size`] relies on.
pub fn normalise_keys(subs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    subs.iter()
        .map(|(k, v)| {
            let k = k.trim();
            let name = k
                .strip_prefix("$(")
                .and_then(|r| r.strip_suffix(')'))
                .or_else(|| k.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")))
                .unwrap_or(k)
                .trim();
            (name.to_string(), v.clone())
        })
        .filter(|(k, _)| {
            k != "unsubscribe" && !k.is_empty() && !k.contains("$(") && !k.contains(')')
        })
        .collect()
}

/// Every placeholder `$(name)` as (index of `$(`, index of `)`), in order: a `$(` whose
/// name reaches the next `)` without another `$(` starting. Each byte is looked at once or
/// twice, so a text of a million `$(` without a `)` costs one pass, not a million.
fn placeholders(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = text.as_bytes();
    let open = memchr::memmem::Finder::new(b"$(");
    let mut pos = 0;
    std::iter::from_fn(move || loop {
        let start = pos + open.find(&b[pos..])?;
        let mut i = start + 2;
        loop {
            let j = i + memchr::memchr2(b')', b'$', &b[i..])?;
            if b[j] == b')' {
                pos = j + 1;
                return Some((start, j));
            }
            if b.get(j + 1) == Some(&b'(') {
                // Another `$(` starts inside the name: that one may be a placeholder.
                pos = j;
                break;
            }
            i = j + 1;
        }
    })
}

/// One destination's substitutions over the request's global ones, without copying
/// either (a large global map is shared by every destination, never cloned per one).
#[derive(Clone, Copy)]
pub struct Subs<'a> {
    pub global: &'a BTreeMap<String, String>,
    pub local: &'a BTreeMap<String, String>,
}

impl<'a> Subs<'a> {
    fn get(&self, name: &str) -> Option<&'a String> {
        self.local.get(name).or_else(|| self.global.get(name))
    }
}

/// Replaces every `$(name)` whose name is known; unknown placeholders stay as they are.
/// In a subject (`header`), CR and LF in values become spaces (same length).
pub fn substitute(text: &str, subs: Subs, header: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in placeholders(text) {
        let Some(v) = subs.get(&text[start + 2..end]) else {
            continue;
        };
        out.push_str(&text[copied..start]);
        if header {
            out.extend(
                v.chars()
                    .map(|c| if c == '\r' || c == '\n' { ' ' } else { c }),
            );
        } else {
            out.push_str(v);
        }
        copied = end + 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// The placeholders of one template (subject, text or html): how often each name occurs.
/// Built once per request; the size of any destination's expansion is then a sum over that
/// destination's substitutions, never a walk over the template.
pub struct Placeholders<'a> {
    len: usize,
    counts: HashMap<&'a str, u64>,
}

impl<'a> Placeholders<'a> {
    pub fn scan(text: &'a str) -> Self {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for (start, end) in placeholders(text) {
            *counts.entry(&text[start + 2..end]).or_default() += 1;
        }
        Placeholders {
            len: text.len(),
            counts,
        }
    }

    /// How much `subs` changes the length: each occurrence of a known name trades its
    /// placeholder (`$(` + name + `)`) for the value.
    fn delta(&self, subs: &BTreeMap<String, String>) -> i128 {
        subs.iter()
            .filter_map(|(k, v)| {
                self.counts
                    .get(k.as_str())
                    .map(|n| i128::from(*n) * (v.len() as i128 - k.len() as i128 - 3))
            })
            .sum()
    }

    /// Octets of `substitute(text, subs)`, in O(|subs.local|) given `global_delta` =
    /// [`Placeholders::global_delta`] of `subs.global`, computed once per request.
    pub fn size(&self, subs: Subs, global_delta: i128) -> u128 {
        let mut delta = global_delta + self.delta(subs.local);
        // A local value replaces the global one of the same name: take the global one out.
        for k in subs.local.keys() {
            if let (Some(n), Some(g)) = (self.counts.get(k.as_str()), subs.global.get(k)) {
                delta -= i128::from(*n) * (g.len() as i128 - k.len() as i128 - 3);
            }
        }
        u128::try_from(self.len as i128 + delta).unwrap_or(0)
    }

    pub fn global_delta(&self, global: &BTreeMap<String, String>) -> i128 {
        self.delta(global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn size_without_building_equals_the_built_length() {
        let global = normalise_keys(&map(&[("name", "friend"), ("$(x)", "XX"), ("e", "")]));
        let cases = [
            "",
            "plain",
            "Hello $(name), $(unknown) $(x)$(x) $(",
            "$($(name)) $(x $(name)) $$(e)) $()",
            "$(name",
            "tail )$(e)$(name)$(x)",
        ];
        let locals = [
            map(&[]),
            map(&[("name", "a much longer local value")]),
            map(&[("x", "\r\n"), ("new", "N")]),
            map(&[("name", "")]),
        ];
        for text in cases {
            let p = Placeholders::scan(text);
            let gd = p.global_delta(&global);
            for local in &locals {
                let local = normalise_keys(local);
                let subs = Subs {
                    global: &global,
                    local: &local,
                };
                let mut merged = global.clone();
                merged.extend(local.clone());
                let built = substitute(text, subs, false);
                assert_eq!(built, naive(text, &merged));
                assert_eq!(
                    p.size(subs, gd),
                    built.len() as u128,
                    "{text:?} with {local:?} -> {built:?}"
                );
                assert_eq!(substitute(text, subs, true).len(), built.len());
            }
        }
    }

    #[test]
    fn a_bomb_is_sized_without_being_built() {
        let text = "$(a)".repeat(100_000);
        let value = "x".repeat(1_000_000);
        let subs = map(&[("a", &value)]);
        let p = Placeholders::scan(&text);
        let gd = p.global_delta(&subs);
        let none = BTreeMap::new();
        let subs = Subs {
            global: &subs,
            local: &none,
        };
        assert_eq!(p.size(subs, gd), 100_000_000_000);
    }

    #[test]
    fn keys_that_cannot_name_a_placeholder_are_dropped() {
        let keys = normalise_keys(&map(&[
            ("{{ a }}", "1"),
            ("$(b)", "2"),
            ("unsubscribe", "3"),
            ("$(c", "4"),
            ("d)", "5"),
            ("  ", "6"),
        ]));
        assert_eq!(keys, map(&[("a", "1"), ("b", "2")]));
    }

    /// The substitution as first written (quadratic on `$(` without `)`), as an oracle.
    fn naive(text: &str, subs: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("$(") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find(')') {
                Some(end) if subs.contains_key(&after[..end]) => {
                    out.push_str(&subs[&after[..end]]);
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push_str("$(");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn linear_substitution_agrees_with_the_naive_one() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = ['$', '(', ')', 'a', 'b', ' '];
        let subs = normalise_keys(&map(&[("a", "1"), ("ab", "22"), ("b", ""), ("", "x")]));
        let none = BTreeMap::new();
        let layered = Subs {
            global: &subs,
            local: &none,
        };
        for _ in 0..20_000 {
            let n = rng.gen_range(0..24);
            let text: String = (0..n)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let built = substitute(&text, layered, false);
            assert_eq!(built, naive(&text, &subs), "{text:?}");
            let p = Placeholders::scan(&text);
            let gd = p.global_delta(&subs);
            assert_eq!(p.size(layered, gd), built.len() as u128);
        }
    }

    #[test]
    fn openings_without_a_close_cost_one_pass() {
        let text = "$(".repeat(200_000) + &"$(a".repeat(100_000) + ")";
        let subs = map(&[("a", "z")]);
        let none = BTreeMap::new();
        let started = std::time::Instant::now();
        let out = substitute(
            &text,
            Subs {
                global: &subs,
                local: &none,
            },
            false,
        );
        assert!(out.ends_with("$(a$(az"));
        assert_eq!(Placeholders::scan(&text).counts.len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
