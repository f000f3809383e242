//! The second step of validation: sizing every destination's subject, text and html after
//! substitution (SPEC 6.3 "API"), then building the transactions. Runs after the TPS
//! bucket was charged; what it may allocate is bounded by destinations times the limits.

use super::{invalid, Checked, Invalid, Submission, Transaction, MAX_HTML, MAX_SUBJECT, MAX_TEXT};
use crate::model::types::{check_address, DeliveryCode};
use crate::outbound::substitute::{normalise_keys, substitute, Placeholders, Subs};
use std::collections::BTreeMap;

/// Sizes every destination's subject, text and html after substitution, refusing the
/// request when one is over its limit, and only then builds the transactions: so what a
/// request can make the daemon allocate is bounded by its destinations times the limits.
pub fn expand(c: Checked, new_tid: &mut dyn FnMut() -> String) -> Result<Submission, Invalid> {
    let locals: Vec<BTreeMap<String, String>> =
        c.to.iter()
            .map(|d| normalise_keys(&d.substitutions))
            .collect();
    check_sizes(&c, &locals)?;
    let transactions = if c.multiple {
        one_for_all(&c, &locals, new_tid)
    } else {
        one_per_address(&c, &locals, new_tid)
    };
    let mut sub = c.base;
    sub.transactions = transactions;
    Ok(sub)
}

/// Subject, text and html for one destination: the global substitutions, then its own.
fn render(
    c: &Checked,
    local: &BTreeMap<String, String>,
) -> (String, Option<String>, Option<String>) {
    let subs = Subs {
        global: &c.global,
        local,
    };
    (
        substitute(&c.subject, subs, true),
        c.text.as_ref().map(|t| substitute(t, subs, false)),
        c.html.as_ref().map(|h| substitute(h, subs, false)),
    )
}

/// `multipleToRecipients`: one email to every valid address under one tid (rendered with
/// the first destination's substitutions), and a failed transaction per invalid address.
fn one_for_all(
    c: &Checked,
    locals: &[BTreeMap<String, String>],
    new_tid: &mut dyn FnMut() -> String,
) -> Vec<Transaction> {
    let none = BTreeMap::new();
    let valid = |a: &&String| check_address(a).is_ok();
    let to: Vec<&String> = c.to.iter().flat_map(|d| &d.email).collect();
    let (s, t, h) = render(c, locals.first().unwrap_or(&none));
    let correlation =
        c.to.first()
            .and_then(|d| d.correlation_id.clone())
            .filter(|c| !c.is_empty())
            .or(c.correlation.clone());
    let all = || to.iter().copied().chain(&c.cc).chain(&c.bcc);
    let mut transactions = Vec::new();
    for bad in all().filter(|a| !valid(a)) {
        transactions.push(failed(new_tid(), bad, correlation.clone()));
    }
    let recipients: Vec<String> = all().filter(valid).cloned().collect();
    if !recipients.is_empty() {
        transactions.push(Transaction {
            tid: new_tid(),
            recipients,
            to: to.iter().copied().filter(valid).cloned().collect(),
            cc: c.cc.iter().filter(valid).cloned().collect(),
            correlation_id: correlation,
            subject: s,
            text: t,
            html: h,
            immediate: None,
        });
    }
    transactions
}

/// One email and tid per address: to[] with its destination's substitutions and
/// correlation id, cc and bcc with the global ones; an invalid address fails at once.
fn one_per_address(
    c: &Checked,
    locals: &[BTreeMap<String, String>],
    new_tid: &mut dyn FnMut() -> String,
) -> Vec<Transaction> {
    let none = BTreeMap::new();
    let mut transactions = Vec::new();
    let mut one = |addr: &String, local: &BTreeMap<String, String>, correlation| {
        let tid = new_tid();
        if check_address(addr).is_err() {
            transactions.push(failed(tid, addr, correlation));
            return;
        }
        let (s, t, h) = render(c, local);
        transactions.push(Transaction {
            tid,
            recipients: vec![addr.clone()],
            to: vec![addr.clone()],
            cc: Vec::new(),
            correlation_id: correlation,
            subject: s,
            text: t,
            html: h,
            immediate: None,
        });
    };
    for (d, local) in c.to.iter().zip(locals) {
        let correlation = d
            .correlation_id
            .clone()
            .filter(|c| !c.is_empty())
            .or(c.correlation.clone());
        for a in &d.email {
            one(a, local, correlation.clone());
        }
    }
    for a in c.cc.iter().chain(&c.bcc) {
        one(a, &none, c.correlation.clone());
    }
    transactions
}

/// Refuses the request when a destination's subject, text or html would be over its limit
/// after substitution, naming the destination and the field. Costs one scan of each
/// template plus, per destination, a look-up per substitution it brings.
fn check_sizes(c: &Checked, locals: &[BTreeMap<String, String>]) -> Result<(), Invalid> {
    let fields: Vec<(&str, Placeholders, i128, usize)> = [
        ("subject", Some(c.subject.as_str()), MAX_SUBJECT),
        ("text", c.text.as_deref(), MAX_TEXT),
        ("html", c.html.as_deref(), MAX_HTML),
    ]
    .into_iter()
    .filter_map(|(name, text, limit)| {
        let p = Placeholders::scan(text?);
        let global_delta = p.global_delta(&c.global);
        Some((name, p, global_delta, limit))
    })
    .collect();
    let fits = |who: &str, local: &BTreeMap<String, String>| -> Result<(), Invalid> {
        let subs = Subs {
            global: &c.global,
            local,
        };
        for (name, p, global_delta, limit) in &fields {
            let size = p.size(subs, *global_delta);
            if size > *limit as u128 {
                let over = if *limit == MAX_SUBJECT {
                    format!("{limit} octets")
                } else {
                    format!("{} KB", limit / 1024)
                };
                return Err(invalid(
                    who,
                    format!(
                        "{}.{name} is {size} octets after substitution, over {over}",
                        c.source
                    ),
                ));
            }
        }
        Ok(())
    };
    let none = BTreeMap::new();
    if c.multiple {
        return fits("to[0]", locals.first().unwrap_or(&none));
    }
    let valid = |a: &String| check_address(a).is_ok();
    for (i, (d, local)) in c.to.iter().zip(locals).enumerate() {
        if d.email.iter().any(valid) {
            fits(&format!("to[{i}]"), local)?;
        }
    }
    // cc and bcc all get the global substitutions: one check covers them.
    for (field, list) in [("cc", &c.cc), ("bcc", &c.bcc)] {
        if let Some(i) = list.iter().position(valid) {
            return fits(&format!("{field}[{i}]"), &none);
        }
    }
    Ok(())
}

fn failed(tid: String, addr: &str, correlation: Option<String>) -> Transaction {
    Transaction {
        tid,
        recipients: vec![addr.to_string()],
        to: vec![addr.to_string()],
        cc: Vec::new(),
        correlation_id: correlation,
        subject: String::new(),
        text: None,
        html: None,
        immediate: Some(check_address(addr).err().unwrap_or(DeliveryCode::Invalid)),
    }
}
