"""Writes recipient_vectors.csv (run: python tests/ingest/vectors/make_recipient_vectors.py > \
tests/ingest/vectors/recipient_vectors.csv). Notify's vectors are copied from
alphagov/notifications-utils tests/test_recipient_validation.py (MIT licence); `own` ones are ours.
`notify` is Notify's verdict; `note` says why ours differs where it does."""
import csv, sys
NU = "alphagov/notifications-utils tests/test_recipient_validation.py"
rows = []
def add(channel, region, inp, expected, detail, notify, source, note="", options=""):
    rows.append(dict(channel=channel, region=region, options=options, input=inp, expected=expected,
                     detail=detail, notify=notify, source=source, note=note))
def esc(s):
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")
            .replace("\u200b", "\\u200B").replace("\ufeff", "\\uFEFF").replace("\u00a0", "\\u00A0"))
uk = ["7123456789", "07123456789", "07123 456789", "07123-456-789", "00447123456789", "00 44 7123456789",
      "+447123456789", "+44 7123 456 789", "+44 (0)7123 456 789", "\u200b\t\t+44 (0)7123 \ufeff 456 789 \r\n"]
for v in uk:
    add("sms", "GB", v, "valid", "+447123456789", "valid", NU + ": valid_uk_mobile_phone_numbers")
for v, note in [("07123\u2010456\u2010789", "U+2010 hyphens"), ("07123\u2013456\u2013789", "en dashes"),
                ("+44\u00a07123\u00a0456\u00a0789", "no-break spaces"), ("+44 7123 456 789\u200b", "trailing zero-width space")]:
    add("sms", "GB", v, "valid", "+447123456789", "", "own: the same mobile as a word processor writes it", note)
intl = [("+71234567890", "invalid", "not a valid number for RU", "libphonenumber has no such Russian range"),
        ("+1-202-555-0104", "valid", "+12025550104", ""), ("+12025550104", "valid", "+12025550104", ""),
        ("0012025550104", "valid", "+12025550104", ""), ("+0012025550104", "valid", "+12025550104", ""),
        ("23051234567", "invalid", "not a valid number for GB", "without + it is read as a national number in the default region"),
        ("+682 12345", "invalid", "not a valid number for CK", "libphonenumber has no such Cook Islands range"),
        ("+3312345678", "invalid", "not a valid number for FR", "9 digits after +33 are one too few for libphonenumber"),
        ("003312345678", "invalid", "not a valid number for FR", "as above"),
        ("1-2345-12345-12345", "invalid", "not a valid number for GB", "no + and no country: read as a GB national number")]
for v, exp, detail, note in intl:
    add("sms", "GB", v, exp, detail, "valid", NU + ": valid_international_phone_numbers",
        ("Notify accepts any 8-15 digits after a known country code; we check the country's plan. " + note) if exp != "valid" else "")
groups = [("Too many digits", ["712345678910", "0712345678910", "0044712345678910", "+44 (0)7123 456 789 10"], "too long"),
          ("Not enough digits", ["0712345678", "004471234567", "00447123456", "+44 (0)7123 456 78"], "not a valid number for GB"),
          ("Not a UK mobile number", [("08081 570364", "a toll-free number cannot receive SMS"),
                                      ("+44 8081 570364", "a toll-free number cannot receive SMS"),
                                      ("0117 496 0860", "a landline cannot receive SMS"),
                                      ("+44 117 496 0860", "a landline cannot receive SMS"),
                                      ("020 7946 0991", "a landline cannot receive SMS"),
                                      ("+44 20 7946 0991", "a landline cannot receive SMS")], None),
          ("Must not contain letters or symbols", [("07890x32109", "contains letters"), ("07123 456789...", None),
                                                   ("07123 \u261f\u261c\u2b07\u2b06\u261e\u261d", "not a valid number for GB"),
                                                   ("07123\u261f\u261c\u2b07\u2b06\u261e\u261d", "not a valid number for GB"),
                                                   ('07";DROP TABLE;"', "contains letters"),
                                                   ("+44 07ab cde fgh", "contains letters"),
                                                   ("ALPHANUM3R1C", "contains letters")], None)]
for error, items, frag in groups:
    for item in items:
        v, detail = (item, frag) if isinstance(item, str) else item
        if v == "07123 456789...":
            add("sms", "GB", v, "valid", "+447123456789", "invalid: " + error, NU + ": invalid_uk_mobile_phone_numbers",
                "we read trailing dots as punctuation, as libphonenumber does")
            continue
        if v == "0712345678":
            detail = "not a valid number for GB"
        add("sms", "GB", v, "invalid", detail, "invalid: " + error, NU + ": invalid_uk_mobile_phone_numbers")
for v, error, detail in [("800000000000", "Country code not found", "not a valid number for GB"),
                         ("1234567", "Not enough digits", "not a valid number for GB"),
                         ("+682 1234", "Not enough digits", "not a valid number for CK"),
                         ("+12345 12345 12345 6", "Too many digits", "")]:
    add("sms", "GB", v, "invalid", detail, "invalid: " + error, NU + ": invalid_phone_numbers")
# the cases and the flags that lift the rules
add("sms", "GB", "0117 496 0860", "valid", "+441174960860", "", "own: issue 12", "--allow-landlines", "allow_landlines")
add("sms", "GB", "0900 123 4567", "invalid", "a premium-rate number cannot receive SMS", "", "own: issue 12")
add("sms", "GB", "0900 123 4567", "invalid", "a premium-rate number cannot receive SMS", "", "own: issue 12",
    "only landlines are lifted by --allow-landlines", "allow_landlines")
add("sms", "US", "1-800-555-0199", "invalid", "a toll-free number cannot receive SMS", "", "own: issue 12")
add("sms", "GB", "+1 (202) 555-0104 ext. 12", "invalid", "has an extension: an SMS cannot reach one", "", "own: issue 12")
add("sms", "GB", "+44 7911 200101 #12", "invalid", "has an extension: an SMS cannot reach one", "", "own")
add("sms", "GB", "07911 200101 x 3", "invalid", "has an extension: an SMS cannot reach one", "", "own")
add("sms", "GB", "0845 464 0000", "invalid", "cannot receive SMS", "", "own", "libphonenumber files 0845 under premium rate")
add("sms", "GB", "03001234567", "invalid", "a UAN (universal access number) cannot receive SMS", "", "own")
add("sms", "GB", "076 0000 0000", "invalid", "a pager number cannot receive SMS", "", "own")
add("sms", "GB", "056 1234 5678", "valid", "+445612345678", "", "own", "VoIP can take texts")
add("sms", "GB", "070 1234 5678", "valid", "+447012345678", "", "own", "personal numbers can take texts")
add("sms", "GB", "+1 202 555 0104", "valid", "+12025550104", "", "own", "the US plan does not tell landlines from mobiles: fixed-line-or-mobile passes")
add("sms", "GB", "+33 1 23 45 67 89", "invalid", "a landline cannot receive SMS", "", "own")
add("sms", "GB", "+33 6 12 34 56 78", "valid", "+33612345678", "", "own")

NUE = NU + ": valid_email_addresses"
for v in ["email@domain.com", "email@domain.COM", "firstname.lastname@domain.com", "firstname.o'conner@domain.com",
          "email@subdomain.domain.com", "firstname+lastname@domain.com", "1234567890@domain.com",
          "email@domain-one.com", "_______@domain.com", "email@domain.name", "email@domain.superlongtld",
          "email@domain.co.jp", "firstname-lastname@domain.com",
          "info@german-financial-services.vermögensberatung",
          "info@german-financial-services.reallylongarbitrarytldthatiswaytoohugejustincase",
          "japanese-info@例え.テスト", "email@double--hyphen.com"]:
    add("email", "", v, "valid", "", "valid", NUE)
NUI = NU + ": invalid_email_addresses"
for v in ["email@123.123.123.123", "email@[123.123.123.123]", "plainaddress", "@no-local-part.com",
          "Outlook Contact <outlook-contact@domain.com>", "no-at.domain.com", "no-tld@domain",
          ";beginning-semicolon@domain.co.uk", "middle-semicolon@domain.co;uk", "trailing-semicolon@domain.com;",
          '"email+leading-quotes@domain.com', 'email+middle"-quotes@domain.com', '"quoted-local-part"@domain.com',
          '"quoted@domain.com"', "lots-of-dots@domain..gov..uk", "two-dots..in-local@domain.com",
          "multiple@domains@domain.com", "spaces in local@domain.com", "spaces-in-domain@dom ain.com",
          "underscores-in-domain@dom_ain.com", "pipe-in-domain@example.com|gov.uk", "comma,in-local@gov.uk",
          "comma-in-domain@domain,gov.uk", "pound-sign-in-local£@domain.com", "local-with-’-apostrophe@domain.com",
          "local-with-”-quotes@domain.com", "domain-starts-with-a-dot@.domain.com", "brackets(in)local@domain.com",
          "email-too-long-" + "a" * 320 + "@example.com", "incorrect-punycode@xn---something.com"]:
    detail = {"pound-sign-in-local£@domain.com": "£ is not an ASCII character",
              "local-with-’-apostrophe@domain.com": "’ is a curly apostrophe: probably pasted from a word processor",
              "local-with-”-quotes@domain.com": "” is a curly quote: probably pasted from a word processor"}.get(v, "")
    add("email", "", v, "invalid", detail, "invalid", NUI)
for v in ["pound-sign-in-local£@domain.com", "local-with-’-apostrophe@domain.com", "local-with-”-quotes@domain.com"]:
    add("email", "", v, "valid", "", "", "own: issue 12", "--allow-smtputf8", "allow_smtputf8")
add("email", "", "ann\u2013marie@example.com", "invalid", "– is an en dash: probably pasted from a word processor", "", "own")
add("email", "", "o\u2019brien@example.ie", "invalid", "’ is a curly apostrophe", "", "own")
add("email", "", "José@example.es", "invalid", "é is not an ASCII character", "", "own")
add("email", "", "bob@MÜNCHEN.de", "valid", "bob@xn--mnchen-3ya.de", "", "own", "IDN domains are sent in punycode")

w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
w.writeheader()
for r in rows:
    r["input"] = esc(r["input"])
    w.writerow(r)
print(len(rows), file=sys.stderr)
