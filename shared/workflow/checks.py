"""Checks of JSON values that record an error ``(path, reason)`` instead of raising, and the
parsing of JSON text that notices duplicate keys: the generic half of validating a workflow
definition (``shared.workflow.rules`` holds the workflow's own rules).
"""

import json
import sys

from shared.workflow.form import MAX_NAME, MAX_SOURCE, is_name

_NAME_RULE = "names are 1-%d characters of a-z, 0-9 and _, starting with a letter" % MAX_NAME


def kind_of(x):
    if x is None:
        return "null"
    if x is True or x is False:
        return "boolean"
    if isinstance(x, int):
        return "integer"
    if isinstance(x, float):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, (list, tuple)):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


def is_int(x):
    return isinstance(x, int) and x is not True and x is not False


def quote(x):
    # A user-supplied value for a message, kept short.
    s = repr(x) if isinstance(x, str) else str(x)
    return s if len(s) <= 40 else s[:37] + "..."


def at(path, key):
    return key if path == "$" else path + "." + key


def _distance(a, b):
    # Levenshtein distance of two short strings.
    prev = list(range(len(b) + 1))
    for i in range(len(a)):
        cur = [i + 1]
        for j in range(len(b)):
            cur.append(min(prev[j + 1] + 1, cur[j] + 1, prev[j] + (a[i] != b[j])))
        prev = cur
    return prev[-1]


def _hint(key, allowed):
    if isinstance(key, str) and len(key) <= 40:
        for k in allowed:
            if _distance(key, k) <= 2:
                return " (did you mean %r?)" % k
    return ""


class _DupDict(dict):
    # A JSON object that had duplicate keys (CPython only: MicroPython's json keeps the
    # last silently). ``dups`` lists them.
    dups = ()


def _pairs(pairs):
    d = {}
    dups = []
    for k, v in pairs:
        if k in d:
            dups.append(k)
        d[k] = v
    if dups:
        d = _DupDict(d)
        d.dups = dups
    return d


def parse(defn):
    # (dict-or-other, error or None) for a definition given as JSON text.
    if isinstance(defn, (bytes, bytearray)):
        if len(defn) > MAX_SOURCE:
            return None, "source is %d bytes, over the %d-byte limit" % (len(defn), MAX_SOURCE)
        try:
            defn = bytes(defn).decode("utf-8")
        except Exception:  # noqa: BLE001 - UnicodeError on CPython, ValueError-ish on MP
            return None, "source is not UTF-8 text"
    else:
        try:
            n = len(defn.encode("utf-8"))
        except Exception:  # noqa: BLE001 - lone surrogates
            return None, "source is not UTF-8 text"
        if n > MAX_SOURCE:
            return None, "source is %d bytes, over the %d-byte limit" % (n, MAX_SOURCE)
    try:
        if sys.implementation.name == "micropython":
            return json.loads(defn), None
        return json.loads(defn, object_pairs_hook=_pairs), None
    except Exception as e:  # noqa: BLE001 - any parse failure is the source's fault
        return None, "not valid JSON: %s" % (str(e)[:100],)


class Checks:
    """Collects ``errs``, a list of ``(path, reason)``; each check returns the checked value,
    or None (False for ``obj``) after recording an error."""

    def __init__(self):
        self.errs = []

    def err(self, path, reason):
        """Record that the value at ``path`` is wrong, and why."""
        self.errs.append((path, reason))

    def obj(self, path, x, required, optional):
        if not isinstance(x, dict):
            self.err(path, "expected an object, got " + kind_of(x))
            return False
        for k in getattr(x, "dups", ()):
            self.err(at(path, k), "duplicate key %r" % k)
        for k in required:
            if k not in x:
                self.err(at(path, k), "missing required key")
        extra = []
        for k in x:
            if k not in required and k not in optional:
                extra.append(k)
        extra.sort(key=str)
        for k in extra:
            self.err(
                at(path, str(k)), "unknown key %s%s" % (quote(k), _hint(k, required + optional))
            )
        return True

    def integer(self, path, x, lo, hi, what):
        if not is_int(x):
            self.err(path, "expected an integer, got " + kind_of(x))
            return None
        if x < lo or x > hi:
            n = str(x) if -(10**15) < x < 10**15 else "a huge integer"
            self.err(path, "%s is outside %s [%d, %d]" % (n, what, lo, hi))
            return None
        return x

    def items(self, path, x, most, what):
        if not isinstance(x, list):
            self.err(path, "expected an array, got " + kind_of(x))
            return []
        if len(x) > most:
            self.err(path, "%d %s, over the limit of %d" % (len(x), what, most))
        return x

    def name(self, path, x):
        if not isinstance(x, str):
            self.err(path, "expected a name (string), got " + kind_of(x))
            return None
        if not is_name(x):
            self.err(path, "invalid name %s: %s" % (quote(x), _NAME_RULE))
            return None
        return x

    def declare(self, path, x, table, kind, seen):
        # Add name x to table (name -> index); refuse duplicates. seen: name -> path.
        n = self.name(path, x)
        if n is None:
            return None
        if n in table:
            self.err(path, "duplicate %s name %r (first at %s)" % (kind, n, seen[n]))
            return None
        seen[n] = path
        table[n] = len(table)
        return n

    def ref(self, path, x, table, kind):
        if not isinstance(x, str):
            self.err(path, "expected a %s name (string), got %s" % (kind, kind_of(x)))
            return None
        if x not in table:
            names = sorted(table)
            known = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            self.err(
                path,
                "unknown %s %s (%s)"
                % (kind, quote(x), "declared: " + known if names else "none declared"),
            )
            return None
        return table[x]

    def names(self, path, x, table, kind, most):
        seen = {}
        names = self.items(path, x, most, kind + "s")
        for i in range(len(names)):
            n = names[i]
            self.declare("%s[%d]" % (path, i), n, table, kind, seen)

    def one_of(self, p, x, kinds, what):
        # The one key of x that is in kinds, or None after an error.
        one = None
        for k in kinds:
            if k in x:
                if one is not None:
                    one = ""
                    break
                one = k
        if one:
            return one
        found = [k for k in kinds if k in x]
        if found:
            self.err(p, "more than one %s: %s" % (what, ", ".join(found)))
        else:
            self.err(p, "no %s: expected one of %s" % (what, ", ".join(kinds)))
        return None

    def tagged(self, path, x, kinds, what):
        """The one key of object ``x`` that says which of ``kinds`` it is (a trigger's or an
        action's), or None after an error."""
        if not isinstance(x, dict):
            self.err(path, "expected an object, got " + kind_of(x))
            return None
        return self.one_of(path, x, kinds, what)
