//! Domain types shared by the outbound path: delivery codes (SPEC 5) and receipt filters.
//! A `DeliveryCode` knows its number, status word, receipt and default description, so no
//! string codes float around the core. `ApiCode` does the same for the codes the HTTP API
//! answers with (SPEC 4).

/// Every delivery notification code of SPEC 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DeliveryCode {
    Submitted,
    Delivered,
    Read,
    Clicked,
    Bounce,
    Complaint,
    NotVerified,
    Invalid,
    TooLong,
    AlreadyBounced,
    Unsubscribed,
    Expired,
    BuildFailed,
    RouteRefused,
    NoConsent,
    FrequencyCap,
}

/// A receipt kind a request may filter on (`requestedReceipts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Receipt {
    Submitted,
    Delivered,
    Read,
    Clicked,
    Bounced,
    NotVerified,
    Invalid,
    Complaint,
    Failed,
}

impl Receipt {
    pub const ALL: [Receipt; 9] = [
        Receipt::Submitted,
        Receipt::Delivered,
        Receipt::Read,
        Receipt::Clicked,
        Receipt::Bounced,
        Receipt::NotVerified,
        Receipt::Invalid,
        Receipt::Complaint,
        Receipt::Failed,
    ];

    /// Parses a receipt name, case-insensitively; `bounce` means `bounced`.
    pub fn parse(s: &str) -> Option<Receipt> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "submitted" => Receipt::Submitted,
            "delivered" => Receipt::Delivered,
            "read" => Receipt::Read,
            "clicked" => Receipt::Clicked,
            "bounced" | "bounce" => Receipt::Bounced,
            "not verified" => Receipt::NotVerified,
            "invalid" => Receipt::Invalid,
            "complaint" => Receipt::Complaint,
            "failed" => Receipt::Failed,
            _ => return None,
        })
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of receipts, stored as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipts(u16);

impl Receipts {
    pub fn all() -> Self {
        Receipts(Receipt::ALL.iter().fold(0, |acc, r| acc | r.bit()))
    }
    pub fn none() -> Self {
        Receipts(0)
    }
    pub fn with(self, r: Receipt) -> Self {
        Receipts(self.0 | r.bit())
    }
    pub fn contains(self, r: Receipt) -> bool {
        self.0 & r.bit() != 0
    }
}

/// Every code the HTTP API answers with in its `{"code","description"}` body (SPEC 4),
/// besides the delivery codes of [`DeliveryCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiCode {
    /// 1001: the request was accepted and its transactions queued.
    Queued,
    /// 7000: the body is not well-formed JSON (or could not be read).
    Malformed,
    /// 7001: authentication failed (bad key, token or signature).
    AuthFailed,
    /// 7002: no service key or token was given.
    KeyMissing,
    /// 7003: a mandatory field is missing.
    MissingField,
    /// 7004: a field has an invalid value (also 413 and 415 bodies).
    InvalidValue,
    /// 7005: the service's TPS is exceeded (429).
    TpsExceeded,
    /// 7009: the request has too many destinations.
    TooManyDestinations,
    /// 7010: the daemon takes no new work now (low space, failing store).
    Unavailable,
    /// 7404: no such resource.
    NotFound,
    /// 7405: the method is not allowed on this resource.
    MethodNotAllowed,
    /// 7409: the request conflicts with the resource's state.
    Conflict,
    /// 7500: an internal error; the daemon log says more.
    Internal,
    /// 7503: the daemon is still starting.
    Starting,
}

impl ApiCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiCode::Queued => "1001",
            ApiCode::Malformed => "7000",
            ApiCode::AuthFailed => "7001",
            ApiCode::KeyMissing => "7002",
            ApiCode::MissingField => "7003",
            ApiCode::InvalidValue => "7004",
            ApiCode::TpsExceeded => "7005",
            ApiCode::TooManyDestinations => "7009",
            ApiCode::Unavailable => "7010",
            ApiCode::NotFound => "7404",
            ApiCode::MethodNotAllowed => "7405",
            ApiCode::Conflict => "7409",
            ApiCode::Internal => "7500",
            ApiCode::Starting => "7503",
        }
    }
}

impl std::fmt::Display for ApiCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ApiCode> for &'static str {
    fn from(code: ApiCode) -> &'static str {
        code.as_str()
    }
}

impl DeliveryCode {
    pub fn code(self) -> &'static str {
        match self {
            DeliveryCode::Submitted => "7501",
            DeliveryCode::Delivered => "7500",
            DeliveryCode::Read => "7502",
            DeliveryCode::Clicked => "7528",
            DeliveryCode::Bounce => "7520",
            DeliveryCode::Complaint => "7521",
            DeliveryCode::NotVerified => "7522",
            DeliveryCode::Invalid => "7523",
            DeliveryCode::TooLong => "7524",
            DeliveryCode::AlreadyBounced => "7240",
            DeliveryCode::Unsubscribed => "7241",
            DeliveryCode::Expired => "7590",
            DeliveryCode::BuildFailed => "7591",
            DeliveryCode::RouteRefused => "7592",
            DeliveryCode::NoConsent => "7593",
            DeliveryCode::FrequencyCap => "7594",
        }
    }

    /// The `deliveryStatus` word.
    pub fn status(self) -> &'static str {
        match self {
            DeliveryCode::Submitted => "Submitted",
            DeliveryCode::Delivered => "Delivered",
            DeliveryCode::Read => "Read",
            DeliveryCode::Clicked => "Clicked",
            DeliveryCode::Bounce => "Bounce",
            DeliveryCode::Complaint => "Complaint",
            DeliveryCode::NotVerified => "Not Verified",
            DeliveryCode::Invalid
            | DeliveryCode::TooLong
            | DeliveryCode::AlreadyBounced
            | DeliveryCode::Unsubscribed
            | DeliveryCode::Expired
            | DeliveryCode::BuildFailed
            | DeliveryCode::RouteRefused
            | DeliveryCode::NoConsent
            | DeliveryCode::FrequencyCap => "Failed",
        }
    }

    pub fn receipt(self) -> Receipt {
        match self {
            DeliveryCode::Submitted => Receipt::Submitted,
            DeliveryCode::Delivered => Receipt::Delivered,
            DeliveryCode::Read => Receipt::Read,
            DeliveryCode::Clicked => Receipt::Clicked,
            DeliveryCode::Bounce => Receipt::Bounced,
            DeliveryCode::Complaint => Receipt::Complaint,
            DeliveryCode::NotVerified => Receipt::NotVerified,
            DeliveryCode::Invalid | DeliveryCode::TooLong => Receipt::Invalid,
            DeliveryCode::AlreadyBounced
            | DeliveryCode::Unsubscribed
            | DeliveryCode::Expired
            | DeliveryCode::BuildFailed
            | DeliveryCode::RouteRefused
            | DeliveryCode::NoConsent
            | DeliveryCode::FrequencyCap => Receipt::Failed,
        }
    }

    /// The Description used when nothing more specific is known.
    pub fn default_description(self) -> &'static str {
        match self {
            DeliveryCode::Submitted => "Submitted",
            DeliveryCode::Delivered => "Delivered",
            DeliveryCode::Read => "Read",
            DeliveryCode::Clicked => "Clicked",
            DeliveryCode::Bounce => "Permanent_General",
            DeliveryCode::Complaint => "abuse",
            DeliveryCode::NotVerified => {
                "Account in sandbox mode. Destination email address is not verified"
            }
            DeliveryCode::Invalid => "Invalid email address",
            DeliveryCode::TooLong => "Email address max length reached",
            DeliveryCode::AlreadyBounced => "already bounced",
            DeliveryCode::Unsubscribed => "unsubscribed",
            DeliveryCode::Expired => "Expired before it could be submitted",
            DeliveryCode::BuildFailed => "Message could not be built",
            DeliveryCode::RouteRefused => "Refused by the route",
            DeliveryCode::NoConsent => "Contact policy: no consent",
            DeliveryCode::FrequencyCap => "Contact policy: frequency cap reached",
        }
    }
}

/// Checks an address the way postern needs before it becomes an envelope or header value:
/// `local@domain`, no CR/LF/NUL/spaces/angle brackets, at most 254 octets with a local part
/// of at most 64. Returns the code that applies when it fails.
pub fn check_address(addr: &str) -> Result<(), DeliveryCode> {
    let addr = addr.trim();
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(DeliveryCode::Invalid);
    };
    let bad = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | ',' | ';' | '"' | '(' | ')' | '[' | ']' | '\\'
            )
    };
    if local.is_empty() || domain.is_empty() || addr.chars().any(bad) || local.contains('@') {
        return Err(DeliveryCode::Invalid);
    }
    let labels_ok = domain.split('.').count() >= 2
        && domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if !labels_ok || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(DeliveryCode::Invalid);
    }
    if addr.len() > 254 || local.len() > 64 {
        return Err(DeliveryCode::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_codes_keep_their_wire_strings() {
        let table = [
            (ApiCode::Queued, "1001"),
            (ApiCode::Malformed, "7000"),
            (ApiCode::AuthFailed, "7001"),
            (ApiCode::KeyMissing, "7002"),
            (ApiCode::MissingField, "7003"),
            (ApiCode::InvalidValue, "7004"),
            (ApiCode::TpsExceeded, "7005"),
            (ApiCode::TooManyDestinations, "7009"),
            (ApiCode::Unavailable, "7010"),
            (ApiCode::NotFound, "7404"),
            (ApiCode::MethodNotAllowed, "7405"),
            (ApiCode::Conflict, "7409"),
            (ApiCode::Internal, "7500"),
            (ApiCode::Starting, "7503"),
        ];
        for (code, wire) in table {
            assert_eq!(code.as_str(), wire);
            assert_eq!(code.to_string(), wire);
        }
    }

    #[test]
    fn addresses_are_checked_for_syntax_and_length() {
        assert_eq!(check_address("a@example.org"), Ok(()));
        assert_eq!(check_address("first.last+tag@sub.example.org"), Ok(()));
        for bad in [
            "",
            "a",
            "a@",
            "@b.org",
            "a b@c.org",
            "a@b",
            "a\r\n@b.org",
            "a@@b.org",
            "<a@b.org>",
            "a..b@c.org",
            "a@-b.org",
        ] {
            assert_eq!(check_address(bad), Err(DeliveryCode::Invalid), "{bad:?}");
        }
        let long_local = format!("{}@example.org", "x".repeat(65));
        assert_eq!(check_address(&long_local), Err(DeliveryCode::TooLong));
        let long = format!("a@{}.org", vec!["x".repeat(60); 5].join("."));
        assert_eq!(check_address(&long), Err(DeliveryCode::TooLong));
    }

    #[test]
    fn receipts_parse_case_insensitively_and_filter() {
        assert_eq!(Receipt::parse("Bounce"), Some(Receipt::Bounced));
        assert_eq!(Receipt::parse("NOT VERIFIED"), Some(Receipt::NotVerified));
        assert_eq!(Receipt::parse("opened"), None);
        let r = Receipts::none().with(Receipt::Failed);
        assert!(r.contains(DeliveryCode::Expired.receipt()));
        assert!(!r.contains(DeliveryCode::Submitted.receipt()));
        assert!(Receipts::all().contains(Receipt::Clicked));
    }
}
