//! A bound on what a YAML file's aliases expand to.
//!
//! An alias (`*name`) repeats the node its anchor names, and that node may hold aliases too: ten
//! levels of ten aliases each ("billion laughs") make a 1 kB file worth 10^10 values. yaml_serde
//! caps alias jumps at 100 times the file's events, which still let a 1 MiB file grow to
//! gigabytes in memory (a test measured 2.3 GB and no answer after a minute). Files with aliases
//! are walked once first, without building anything, and refused once the walk passes
//! [`MAX_EXPANDED_BYTES`]. The walk stops at the first top-level key the file's type does not
//! know: the parse that follows refuses that key before it reads its value, and it reads the keys
//! in the same order, so it expands no more than the walk allowed.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use std::cell::Cell;

use super::{Error, MAX_FILE_BYTES};

/// Most a file may amount to with its aliases expanded, counted as the length of every scalar
/// plus two bytes per value: twice the largest file, so a file without aliases never reaches it.
pub const MAX_EXPANDED_BYTES: usize = 2 * MAX_FILE_BYTES;

const REFUSED: &str = "expansion limit";

/// Refuses `source` if its aliases expand it beyond [`MAX_EXPANDED_BYTES`]; `alias_line` is where
/// its first alias is, `known` says which top-level keys its type takes. Other parse errors are
/// left to the parse that follows.
pub(super) fn check(source: &str, file: &str, alias_line: usize, known: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    let left = Cell::new(MAX_EXPANDED_BYTES);
    match (Top { budget: Budget(&left), known }).deserialize(yaml_serde::Deserializer::from_str(source)) {
        // yaml_serde's own cap on alias jumps (100 per event) may stop a small file first.
        Err(e) if e.to_string().contains(REFUSED) || e.to_string().contains("repetition limit exceeded") => {
            Err(Error {
                file: file.to_owned(),
                line: Some(alias_line),
                field: String::new(),
                message: format!(
                    "the aliases (`*name`) from here on expand the file to more than {MAX_EXPANDED_BYTES} bytes; \
                 the limit is {MAX_EXPANDED_BYTES}: write the values out, or repeat fewer of them"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// The document: a top-level map is walked key by key, up to the first key `known` refuses.
struct Top<'a> {
    budget: Budget<'a>,
    known: &'a dyn Fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.budget.spend(2)?;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Name(k) if !(self.known)(&k) => {
                    // The parse refuses this key without reading its value; skip the rest
                    // without following aliases.
                    map.next_value::<IgnoredAny>()?;
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    return Ok(());
                }
                Key::Name(k) => self.budget.spend(2 + k.len())?,
                Key::Other => self.budget.spend(2)?,
            }
            map.next_value_seed(self.budget)?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.budget.visit_seq(seq)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        self.budget.visit_enum(data)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A top-level key: its name when it is a string (an alias as a key is not followed).
enum Key {
    Name(String),
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key::Name(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key::Other)
            }
            // A collection as a key: no workflow or agents file takes one, and the parse refuses
            // it. Skipping its contents follows no alias.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Key::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Key::Other)
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Key, A::Error> {
                let (IgnoredAny, value) = data.variant::<IgnoredAny>()?;
                value.newtype_variant::<IgnoredAny>()?;
                Ok(Key::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Walks a value, spending the bytes it stands for from a shared allowance.
#[derive(Clone, Copy)]
struct Budget<'a>(&'a Cell<usize>);

impl Budget<'_> {
    fn spend<E: de::Error>(self, bytes: usize) -> Result<(), E> {
        let left = self.0.get().checked_sub(bytes).ok_or_else(|| E::custom(REFUSED))?;
        self.0.set(left);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend(2)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend(2)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend(2)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend(2)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.spend(2 + v.len())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend(2)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend(2)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend(2)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend(2)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    /// A tagged value (`!tag value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let ((), value) = data.variant_seed(self)?;
        value.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn laughs(levels: usize) -> String {
        let mut s = String::from("input:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for k in 1..=levels {
            let refs = vec![format!("*a{}", k - 1); 10].join(", ");
            s.push_str(&format!("  a{k}: &a{k} [{refs}]\n"));
        }
        s
    }

    fn any(_: &str) -> bool {
        true
    }

    #[test]
    fn billion_laughs_are_refused_at_the_first_alias() {
        let started = std::time::Instant::now();
        let err = check(&laughs(12), "lol.yaml", 3, &any).expect_err("refused");
        assert_eq!(err.line, Some(3));
        assert!(err.message.contains("expand"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[test]
    fn modest_aliases_pass() {
        assert_eq!(check(&laughs(2), "ok.yaml", 3, &any), Ok(()));
        let defaults = "defaults: &d {timeout: 30, retries: 2}\nagents:\n  a: *d\n  b: *d\n";
        assert_eq!(check(defaults, "ok.yaml", 3, &any), Ok(()));
    }

    #[test]
    fn an_unknown_key_is_left_to_the_parse() {
        // Refused as an unknown key by the parse, which never reads its value.
        assert_eq!(check(&laughs(12), "lol.yaml", 3, &|k| k != "input"), Ok(()));
    }
}
