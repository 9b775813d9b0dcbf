/* _textscan_signals.c: the obfuscation signals, one pass that tells normalize.py which decoders
 * can possibly apply. Each flag is a necessary condition for the matching regex in normalize.py
 * to match, so a false flag safely skips that regex (Python's re costs ~10 ns per character per
 * pattern); `count_tokens` is the spaced-letters decoder's other gate. One of the text scanners
 * of the compiled core (see _ngramcore.c, _textscan.h). */

#include "_textscan.h"

/* How many \w+ tokens have exactly `length` characters: normalize.py tries the spaced-letters
 * decoder only on a lower-cased text with five one-character tokens. */
PyObject *ngc_count_tokens(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "length", NULL};
    (void)module;
    PyObject *s;
    Py_ssize_t want;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Un", keywords, &s, &want)) return NULL;
    Text t;
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &ngc_shared_scratch, &t) < 0) return NULL;
    Py_ssize_t hits = 0, i = 0;
    while (i < t.end) {
        if (!is_word(CH(&t, i))) {
            i++;
            continue;
        }
        Py_ssize_t j = i + 1;
        while (j < t.end && is_word(CH(&t, j))) j++;
        hits += (j - i) == want;
        i = j;
    }
    ngc_scratch_trim(&ngc_shared_scratch);
    return PyLong_FromSsize_t(hits);
}

static inline int is_b64(Py_UCS4 c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/' || c == '_' || c == '-';
}
static inline int is_hex(Py_UCS4 c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
static inline int is_ascii_letter(Py_UCS4 c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static inline int is_leet_sub(Py_UCS4 c) {
    return c == '0' || c == '1' || c == '3' || c == '4' || c == '5' || c == '7' || c == '$';
}
static inline int is_leet_class(Py_UCS4 c) {
    return is_word(c) || c == '@' || c == '$' || c == '!' || c == '|';
}
static inline int is_spaced_sep(Py_UCS4 c) {
    return c == ' ' || c == '.' || c == '-' || c == '_' || c == '*';
}
static inline int is_decimal(Py_UCS4 c) { return c < 128 ? (c >= '0' && c <= '9') : Py_UNICODE_ISDECIMAL(c); }

/* Run [a, b) of leet-class characters starts like an ordinal: \d+(st|nd|rd|th)\b */
static int ordinal_start(const Text *t, Py_ssize_t a, Py_ssize_t end) {
    Py_ssize_t i = a;
    while (i < end && is_decimal(CH(t, i))) i++;
    if (i == a || i + 2 > end) return 0;
    Py_UCS4 x = CH(t, i), y = CH(t, i + 1);
    int suffix = (x == 's' && y == 't') || (x == 'n' && y == 'd') || (x == 'r' && y == 'd') ||
                 (x == 't' && y == 'h');
    return suffix && (i + 2 == end || !is_word(CH(t, i + 2)));
}

int textscan_push_span(PyObject *list, Py_ssize_t start, Py_ssize_t end) {
    /* built directly: Py_BuildValue parses its format on every call (a leetspeak text has
     * dozens of spans) */
    PyObject *span = PyTuple_New(2), *a = PyLong_FromSsize_t(start), *b = PyLong_FromSsize_t(end);
    int failed = !span || !a || !b;
    if (!failed) {
        PyTuple_SET_ITEM(span, 0, a);
        PyTuple_SET_ITEM(span, 1, b);
        a = b = NULL;
        failed = PyList_Append(list, span) < 0;
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(span);
    return failed ? -1 : 0;
}

/* What each character is to the decoders, looked up once per character (ASCII from a table). */
enum {
    C_B64 = 1 << 0,      /* [A-Za-z0-9+/_-] */
    C_HEX = 1 << 1,      /* [0-9A-Fa-f] */
    C_HEXSEP = 1 << 2,   /* [ :] */
    C_LEET = 1 << 3,     /* [\w@$!|] */
    C_SUB = 1 << 4,      /* [013457$] */
    C_LETTER = 1 << 5,   /* [A-Za-z] */
    C_UPPER = 1 << 6,    /* [A-Z] */
    C_LOWDIG = 1 << 7,   /* [a-z0-9] */
    C_DIGIT = 1 << 8,    /* [0-9] */
    C_MARK = 1 << 9,     /* [.-] (Morse) */
    C_GAP = 1 << 10,     /* [ /] (between Morse letters) */
    C_WORD = 1 << 11,    /* \w */
    C_SPACESEP = 1 << 12 /* [ .\-_*] (spaced letters) */
};

static uint16_t ascii_class[128];

void ngc_init_ascii_class(void) {
    for (int c = 0; c < 128; c++) {
        uint16_t k = 0;
        if (is_b64((Py_UCS4)c)) k |= C_B64;
        if (is_hex((Py_UCS4)c)) k |= C_HEX;
        if (c == ' ' || c == ':') k |= C_HEXSEP;
        if (is_leet_class((Py_UCS4)c)) k |= C_LEET;
        if (is_leet_sub((Py_UCS4)c)) k |= C_SUB;
        if (is_ascii_letter((Py_UCS4)c)) k |= C_LETTER;
        if (c >= 'A' && c <= 'Z') k |= C_UPPER;
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) k |= C_LOWDIG;
        if (c >= '0' && c <= '9') k |= C_DIGIT;
        if (c == '.' || c == '-') k |= C_MARK;
        if (c == ' ' || c == '/') k |= C_GAP;
        if (is_word((Py_UCS4)c)) k |= C_WORD;
        if (is_spaced_sep((Py_UCS4)c)) k |= C_SPACESEP;
        ascii_class[c] = k;
    }
}

static inline uint16_t class_at(Py_UCS4 c) {
    if (c < 128) return ascii_class[c];
    return is_word(c) ? (C_WORD | C_LEET) : 0;
}

/* The end of the run of characters of class `mask` that holds position i. */
static inline Py_ssize_t run_end(const Text *t, Py_ssize_t i, uint16_t mask) {
    while (i < t->end && (class_at(CH(t, i)) & mask)) i++;
    return i;
}

/* A hex run [a, b) (hex digits, spaces and colons) holds 16 hex digits with at most one space
 * or colon between neighbours: the only places _HEX_BLOB can match. */
static int hex_run_hits(const Text *t, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t digits = 0;
    int gap = 0;
    for (Py_ssize_t i = a; i < b; i++) {
        if (class_at(CH(t, i)) & C_HEX) {
            if (++digits >= 16) return 1;
            gap = 0;
        } else if (digits && !gap) {
            gap = 1;
        } else {
            digits = 0;
            gap = 0;
        }
    }
    return 0;
}

/* A run [a, b) of dots, dashes, spaces and slashes holds 8 groups of dots and dashes. */
static int morse_run_hits(const Text *t, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t groups = 0;
    int in_group = 0;
    for (Py_ssize_t i = a; i < b; i++) {
        int mark = (class_at(CH(t, i)) & C_MARK) != 0;
        groups += mark && !in_group;
        in_group = mark;
    }
    return groups >= 8;
}

/* _SPACED's matches from `from` on, as re.finditer finds them:
 * (?<!\S)(?:\w[ .\-_*]){4,}\w(?!\S). A match starts after whitespace (or at the start) with k
 * greedy (word, separator) pairs; the regex then backtracks from k pairs down to 4 until a word
 * character followed by whitespace (or the end) closes it. When none does, no match starts at a
 * later pair of the same alternation either (its closing positions are a subset of these), and
 * the characters between are word characters, never after whitespace: the search goes on
 * after the pairs. Linear, where the regex scanned the rest of the text (~10 ns a character). */
static int spaced_matches(const Text *t, Py_ssize_t from, PyObject *out) {
    Py_ssize_t n = t->end, p = from;
    while (p + 1 < n) {
        if ((p > 0 && !Py_UNICODE_ISSPACE(CH(t, p - 1))) || !is_word(CH(t, p)) ||
            !is_spaced_sep(CH(t, p + 1))) {
            p++;
            continue;
        }
        Py_ssize_t k = 0, end = -1;
        while (p + 2 * k + 1 < n && is_word(CH(t, p + 2 * k)) && is_spaced_sep(CH(t, p + 2 * k + 1)))
            k++;
        for (Py_ssize_t j = k; j >= 4 && end < 0; j--) {
            Py_ssize_t q = p + 2 * j;
            if (q < n && is_word(CH(t, q)) && (q + 1 == n || Py_UNICODE_ISSPACE(CH(t, q + 1))))
                end = q + 1;
        }
        if (end >= 0) {
            if (textscan_push_span(out, p, end) < 0) return -1;
            p = end;
        } else {
            p += 2 * k + 1;
        }
    }
    return 0;
}

/* What signals() collects; the rare events fill it (see signal_event). */
typedef struct {
    const Text *t;
    PyObject *b64, *hex, *leet;
    Py_ssize_t leet_done, spaced;
    int morse, failed;
} Signals;

/* A run that has grown long enough to matter, or a leetspeak pair, at position i: examined
 * here, out of line, so that the scan's loop keeps its few counters in registers. */
static __attribute__((noinline)) void signal_event(Signals *g, Py_ssize_t i, int pair,
                                                   Py_ssize_t b64_run, Py_ssize_t hex_run,
                                                   Py_ssize_t morse_run, Py_ssize_t chain) {
    const Text *t = g->t;
    if (g->failed) return;
    if (pair && i >= g->leet_done) {
        Py_ssize_t a = i - 1, b = run_end(t, i, C_LEET);
        while (a > 0 && (class_at(CH(t, a - 1)) & C_LEET)) a--;
        g->leet_done = b;
        if (b - a >= 3 && !ordinal_start(t, a, b)) g->failed = textscan_push_span(g->leet, a, b) < 0;
    }
    if (b64_run == 16) {
        Py_ssize_t a = i - 15, b = run_end(t, i, C_B64);
        uint16_t seen = 0;
        for (Py_ssize_t j = a; j < b; j++) seen |= class_at(CH(t, j));
        /* the blob is the run and up to two "=" of padding after it */
        Py_ssize_t pad = b;
        while (pad < t->end && pad - b < 2 && CH(t, pad) == '=') pad++;
        if ((seen & C_UPPER) && (seen & C_LOWDIG))
            g->failed = g->failed || textscan_push_span(g->b64, a, pad) < 0;
    }
    if (hex_run == 16) {
        Py_ssize_t a = i - 15, b = run_end(t, i, C_HEX | C_HEXSEP);
        if (hex_run_hits(t, a, b)) g->failed = g->failed || textscan_push_span(g->hex, a, b) < 0;
    }
    if (morse_run == 15 && !g->morse)
        g->morse = morse_run_hits(t, i - 14, run_end(t, i, C_MARK | C_GAP));
    if (chain == 5 && g->spaced < 0) g->spaced = i - 8;
}

PyObject *ngc_signals(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", NULL};
    (void)module;
    PyObject *s;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U", keywords, &s)) return NULL;
    Text t;
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &ngc_shared_scratch, &t) < 0) return NULL;
    Signals g = {&t, PyList_New(0), PyList_New(0), PyList_New(0), 0, -1, 0, 0};
    g.failed = !g.b64 || !g.hex || !g.leet;
    Py_ssize_t n = t.end, digits = 0;
    /* One pass keeps a few run lengths, each without a branch (the text alternates between
     * words, spaces and punctuation: a branch per decoder and class change mispredicted several
     * times a word, ~5 ns a character in all); a run that grows long enough to matter, or a
     * leetspeak pair, is an event, rare in a prompt, and only there is its whole run examined
     * (its end, its characters) exactly as the decoder's regex would:
     * - base64: a maximal [A-Za-z0-9+/_-] run of >= 16 with an upper-case letter and a
     *   lower-case letter or digit, with up to two "=" after it (what _B64_BLOB matches and
     *   _decode_b64 accepts);
     * - hex: a maximal run of [0-9A-Fa-f :] holding >= 16 hex digits, consecutive ones at most
     *   one [ :] apart (_HEX_BLOB's shape): such a run is 16 characters long or more;
     * - leet: a maximal run of [\w@$!|] of length >= 3, not an ordinal, holding
     *   [013457$][A-Za-z] (exactly what _LEET_WORD matches): the pair is the event;
     * - morse: a run of [.\- /] holding >= 8 groups of dots/dashes (15 characters or more);
     * - spaced: \w s \w s \w s \w s \w with s in [ .\-_*] (chain counts the word characters
     *   of such an alternation ending at i): where _SPACED's matches can start (see
     *   spaced_matches, which finds them from the first).
     * Masks, not conditionals: gcc turned `in ? run + 1 : 0` into a branch per run. */
    Py_ssize_t b64_run = 0, hex_run = 0, morse_run = 0;
    Py_ssize_t chain1 = 0, chain2 = 0; /* chain length ending at i-1 and at i-2 */
    Py_ssize_t chain_event = 5;        /* -1 (never) once the first chain of five is found */
    uint16_t before = 0;               /* the previous character's class */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t k = class_at(CH(&t, i));
        digits += (k & C_DIGIT) != 0;
        b64_run = (b64_run + 1) & -(Py_ssize_t)((k & C_B64) != 0);
        hex_run = (hex_run + 1) & -(Py_ssize_t)((k & (C_HEX | C_HEXSEP)) != 0);
        morse_run = (morse_run + 1) & -(Py_ssize_t)((k & (C_MARK | C_GAP)) != 0);
        Py_ssize_t chain = (1 + (chain2 & -(Py_ssize_t)((before & C_SPACESEP) != 0))) &
                           -(Py_ssize_t)((k & C_WORD) != 0);
        /* a substitute followed by a letter: both leet-class, so inside one run */
        int pair = ((before & C_SUB) != 0) & ((k & C_LETTER) != 0);
        if (__builtin_expect(pair | (b64_run == 16) | (hex_run == 16) | (morse_run == 15) |
                                 (chain == chain_event),
                             0)) {
            signal_event(&g, i, pair, b64_run, hex_run, morse_run, chain);
            chain_event = g.spaced < 0 ? 5 : -1;
        }
        chain2 = chain1;
        chain1 = chain;
        before = k;
    }
    /* every _SPACED match starts with a chain of five, so none starts before the first */
    PyObject *runs = g.failed ? NULL : PyList_New(0);
    int failed = !runs || (g.spaced >= 0 && spaced_matches(&t, g.spaced, runs) < 0);
    ngc_scratch_trim(&ngc_shared_scratch);
    if (failed) {
        Py_XDECREF(g.b64);
        Py_XDECREF(g.hex);
        Py_XDECREF(g.leet);
        Py_XDECREF(runs);
        return NULL;
    }
    return Py_BuildValue("(NNNONn)", g.b64, g.hex, g.leet, g.morse ? Py_True : Py_False, runs,
                         digits);
}
