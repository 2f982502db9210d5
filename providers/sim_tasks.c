/*
 * sim_tasks.c — the sim's four task families: their tables (countries with
 * capitals and currencies, cities, people, sentiment words, word-problem
 * templates), the generation of examples from a seed, the recognition and
 * solving of a task in prompt text, and the twohop corpus.
 *
 * Every question is made from a template that the solver matches back, so
 * what the generator writes the sim can read, and nothing else: the sim
 * knows its own world and no other. Splits are disjoint by construction:
 * the finite pools (capitals questions, people) are cut into thirds by a
 * fixed permutation, and the open families (arithmetic, classify) draw each
 * split from its own stream and skip any text another split of the same
 * seed could produce (checked by regenerating, the sets being small).
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "sim_int.h"

/* ---- hashing --------------------------------------------------------- */

uint64_t dx__sim_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t dx__sim_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    h ^= 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return dx__sim_mix(h);
}

uint64_t dx__sim_hash_str(uint64_t h, const char *s)
{
    return dx__sim_hash(h, s, s ? strlen(s) : 0);
}

/* ---- tables ---------------------------------------------------------- */

typedef struct country {
    const char *name, *capital, *currency;
} country;

static const country countries[] = {
    {"Afghanistan", "Kabul", "afghani"},
    {"Albania", "Tirana", "lek"},
    {"Algeria", "Algiers", "Algerian dinar"},
    {"Argentina", "Buenos Aires", "Argentine peso"},
    {"Armenia", "Yerevan", "dram"},
    {"Australia", "Canberra", "Australian dollar"},
    {"Austria", "Vienna", "euro"},
    {"Azerbaijan", "Baku", "manat"},
    {"Bangladesh", "Dhaka", "taka"},
    {"Belarus", "Minsk", "Belarusian ruble"},
    {"Belgium", "Brussels", "euro"},
    {"Botswana", "Gaborone", "pula"},
    {"Brazil", "Brasilia", "real"},
    {"Bulgaria", "Sofia", "euro"},
    {"Cambodia", "Phnom Penh", "riel"},
    {"Canada", "Ottawa", "Canadian dollar"},
    {"Chile", "Santiago", "Chilean peso"},
    {"China", "Beijing", "renminbi"},
    {"Colombia", "Bogota", "Colombian peso"},
    {"Costa Rica", "San Jose", "colon"},
    {"Croatia", "Zagreb", "euro"},
    {"Cuba", "Havana", "Cuban peso"},
    {"Czechia", "Prague", "Czech koruna"},
    {"Denmark", "Copenhagen", "Danish krone"},
    {"Ecuador", "Quito", "US dollar"},
    {"Egypt", "Cairo", "Egyptian pound"},
    {"Estonia", "Tallinn", "euro"},
    {"Ethiopia", "Addis Ababa", "birr"},
    {"Finland", "Helsinki", "euro"},
    {"France", "Paris", "euro"},
    {"Georgia", "Tbilisi", "lari"},
    {"Germany", "Berlin", "euro"},
    {"Ghana", "Accra", "cedi"},
    {"Greece", "Athens", "euro"},
    {"Guatemala", "Guatemala City", "quetzal"},
    {"Honduras", "Tegucigalpa", "lempira"},
    {"Hungary", "Budapest", "forint"},
    {"Iceland", "Reykjavik", "Icelandic krona"},
    {"India", "New Delhi", "Indian rupee"},
    {"Indonesia", "Jakarta", "rupiah"},
    {"Iran", "Tehran", "Iranian rial"},
    {"Iraq", "Baghdad", "Iraqi dinar"},
    {"Ireland", "Dublin", "euro"},
    {"Slovenia", "Ljubljana", "euro"},
    {"Italy", "Rome", "euro"},
    {"Jamaica", "Kingston", "Jamaican dollar"},
    {"Japan", "Tokyo", "yen"},
    {"Jordan", "Amman", "Jordanian dinar"},
    {"Kazakhstan", "Astana", "tenge"},
    {"Kenya", "Nairobi", "Kenyan shilling"},
    {"Kuwait", "Kuwait City", "Kuwaiti dinar"},
    {"Laos", "Vientiane", "kip"},
    {"Latvia", "Riga", "euro"},
    {"Lebanon", "Beirut", "Lebanese pound"},
    {"Lithuania", "Vilnius", "euro"},
    {"Madagascar", "Antananarivo", "ariary"},
    {"Malaysia", "Kuala Lumpur", "ringgit"},
    {"Mali", "Bamako", "CFA franc"},
    {"Mexico", "Mexico City", "Mexican peso"},
    {"Mongolia", "Ulaanbaatar", "tugrik"},
    {"Morocco", "Rabat", "Moroccan dirham"},
    {"Mozambique", "Maputo", "metical"},
    {"Nepal", "Kathmandu", "Nepalese rupee"},
    {"Netherlands", "Amsterdam", "euro"},
    {"New Zealand", "Wellington", "New Zealand dollar"},
    {"Nicaragua", "Managua", "cordoba"},
    {"Nigeria", "Abuja", "naira"},
    {"North Korea", "Pyongyang", "North Korean won"},
    {"Norway", "Oslo", "Norwegian krone"},
    {"Oman", "Muscat", "Omani rial"},
    {"Pakistan", "Islamabad", "Pakistani rupee"},
    {"Panama", "Panama City", "balboa"},
    {"Paraguay", "Asuncion", "guarani"},
    {"Peru", "Lima", "sol"},
    {"Philippines", "Manila", "Philippine peso"},
    {"Poland", "Warsaw", "zloty"},
    {"Portugal", "Lisbon", "euro"},
    {"Qatar", "Doha", "Qatari riyal"},
    {"Romania", "Bucharest", "Romanian leu"},
    {"Russia", "Moscow", "Russian ruble"},
    {"Saudi Arabia", "Riyadh", "Saudi riyal"},
    {"Senegal", "Dakar", "CFA franc"},
    {"Serbia", "Belgrade", "Serbian dinar"},
    {"Singapore", "Singapore", "Singapore dollar"},
    {"South Africa", "Pretoria", "rand"},
    {"South Korea", "Seoul", "South Korean won"},
    {"Spain", "Madrid", "euro"},
    {"Slovakia", "Bratislava", "euro"},
    {"Sweden", "Stockholm", "Swedish krona"},
    {"Switzerland", "Bern", "Swiss franc"},
    {"Syria", "Damascus", "Syrian pound"},
    {"Tanzania", "Dodoma", "Tanzanian shilling"},
    {"Thailand", "Bangkok", "baht"},
    {"Tunisia", "Tunis", "Tunisian dinar"},
    {"Turkey", "Ankara", "Turkish lira"},
    {"Uganda", "Kampala", "Ugandan shilling"},
    {"Ukraine", "Kyiv", "hryvnia"},
    {"United Kingdom", "London", "pound sterling"},
    {"United States", "Washington", "US dollar"},
    {"Uruguay", "Montevideo", "Uruguayan peso"},
    {"Venezuela", "Caracas", "bolivar"},
    {"Vietnam", "Hanoi", "dong"},
    {"Zambia", "Lusaka", "kwacha"},
};
#define N_COUNTRIES (sizeof countries / sizeof countries[0])

typedef struct city {
    const char *name, *country;
} city;

static const city cities[] = {
    {"Lyon", "France"},
    {"Marseille", "France"},
    {"Hamburg", "Germany"},
    {"Munich", "Germany"},
    {"Osaka", "Japan"},
    {"Kyoto", "Japan"},
    {"Milan", "Italy"},
    {"Naples", "Italy"},
    {"Porto", "Portugal"},
    {"Seville", "Spain"},
    {"Valencia", "Spain"},
    {"Rotterdam", "Netherlands"},
    {"Antwerp", "Belgium"},
    {"Gothenburg", "Sweden"},
    {"Bergen", "Norway"},
    {"Aarhus", "Denmark"},
    {"Krakow", "Poland"},
    {"Gdansk", "Poland"},
    {"Brno", "Czechia"},
    {"Salzburg", "Austria"},
    {"Geneva", "Switzerland"},
    {"Cork", "Ireland"},
    {"Manchester", "United Kingdom"},
    {"Glasgow", "United Kingdom"},
    {"Chicago", "United States"},
    {"Seattle", "United States"},
    {"Toronto", "Canada"},
    {"Vancouver", "Canada"},
    {"Guadalajara", "Mexico"},
    {"Cordoba", "Argentina"},
    {"Recife", "Brazil"},
    {"Medellin", "Colombia"},
    {"Valparaiso", "Chile"},
    {"Cusco", "Peru"},
    {"Mumbai", "India"},
    {"Chennai", "India"},
    {"Shanghai", "China"},
    {"Busan", "South Korea"},
    {"Melbourne", "Australia"},
    {"Auckland", "New Zealand"},
    {"Mombasa", "Kenya"},
    {"Lagos", "Nigeria"},
    {"Casablanca", "Morocco"},
    {"Alexandria", "Egypt"},
    {"Durban", "South Africa"},
    {"Istanbul", "Turkey"},
};
#define N_CITIES (sizeof cities / sizeof cities[0])

static const char *const first_names[] = {
    "Ada",  "Bruno", "Clara", "Dario", "Elena", "Felix", "Greta", "Hugo",
    "Ines", "Jonas", "Kira",  "Leon",  "Mara",  "Nils",  "Olga",  "Pablo",
    "Rosa", "Sami",  "Tara",  "Ugo",   "Vera",  "Wim",   "Yara",  "Zeno",
    "Alma", "Boris", "Celia", "Emil",  "Frida", "Gael",
};
static const char *const last_names[] = {
    "Moreau",   "Keller",   "Rossi",  "Novak",    "Lindqvist", "Duarte",
    "Okafor",   "Tanaka",   "Petrov", "Haddad",   "Kowalski",  "Brennan",
    "Vargas",   "Nakamura", "Dubois", "Ferreira", "Jansen",    "Svoboda",
    "Castillo", "Weber",    "Marino", "Oyelaran", "Larsen",    "Quintero",
    "Abbott",   "Sato",     "Ibarra", "Kovacs",   "Mendes",    "Holm",
};
#define N_FIRST (sizeof first_names / sizeof first_names[0])
#define N_LAST (sizeof last_names / sizeof last_names[0])
#define N_PEOPLE 180

static const char *const professions[] = {
    "a painter", "an engineer",  "a chemist",  "a novelist", "a violinist",
    "a surgeon", "an architect", "a botanist", "a sculptor", "a journalist",
};

/* Person i's name; pairs (i mod 30, (i + 7*(i/30)) mod 30) are distinct for
 * i < 180 because 7k is not a multiple of 30 for k in 1..5. */
static void person_name(size_t i, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s %s", first_names[i % N_FIRST],
             last_names[(i + 7 * (i / N_FIRST)) % N_LAST]);
}

static size_t person_city(size_t i)
{
    return (i * 13 + 5) % N_CITIES;
}

static int country_index(const char *name)
{
    for (size_t i = 0; i < N_COUNTRIES; i++)
        if (strcmp(countries[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Sentiment words: the classify family's sentences use words of one
 * polarity only, so the label is well defined. */
static const char *const pos_words[] = {
    "wonderful", "delightful", "excellent", "charming", "superb",
    "lovely",    "brilliant",  "fantastic", "pleasant", "great",
};
static const char *const neg_words[] = {
    "terrible", "awful",  "disappointing", "dreadful", "miserable",
    "horrible", "boring", "broken",        "rude",     "poor",
};
static const char *const neu_words[] = {
    "ordinary", "average",  "standard", "typical", "plain",
    "regular",  "adequate", "routine",  "usual",   "moderate",
};
static const char *const nouns[] = {
    "film",  "meal",  "hotel", "concert", "book",   "service",
    "phone", "train", "class", "museum",  "coffee", "game",
};
static const char *const classify_templates[] = {
    "The %s was %s.",
    "I thought the %s was %s.",
    "Honestly, the %s felt %s to me.",
    "Our %s turned out %s.",
    "Everyone agreed the %s was %s.",
    "My friend said the %s was %s.",
};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *const labels[] = {"positive", "negative", "neutral"};

/* Arithmetic word problems: ((a op1 b) op2 c). %N is a first name, %a %b
 * %c the numbers. */
typedef struct arith_template {
    const char *text;
    char op1, op2;
} arith_template;

static const arith_template arith[] = {
    {"%N has %a apples. %N buys %b more apples and then gives %c apples to "
     "a friend. How many apples does %N have now?",
     '+', '-'},
    {"%N reads %a pages every day for %b days and then reads %c more pages. "
     "How many pages did %N read in total?",
     '*', '+'},
    {"A shop had %a pens. It sold %b pens in the morning and %c pens in the "
     "afternoon. How many pens are left?",
     '-', '-'},
    {"%N buys %a boxes of %b cookies and eats %c cookies. How many cookies "
     "are left?",
     '*', '-'},
    {"%N saves %a dollars each week for %b weeks and then spends %c "
     "dollars. How many dollars does %N have left?",
     '*', '-'},
    {"A bus has %a passengers. At the first stop %b people get off and %c "
     "people get on. How many passengers are on the bus now?",
     '-', '+'},
    {"%N plants %a rows of %b trees. A storm knocks down %c trees. How many "
     "trees are still standing?",
     '*', '-'},
    {"Each of %N's %a friends gives %N %b stickers. %N already had %c "
     "stickers. How many stickers does %N have now?",
     '*', '+'},
};

static long apply(char op, long x, long y)
{
    return op == '+' ? x + y : op == '-' ? x - y : x * y;
}

/* ---- names and keys -------------------------------------------------- */

static const char *const task_names[] = {"arithmetic", "capitals", "classify",
                                         "twohop"};

const char *dx_sim_task_name(dx_sim_task t)
{
    return (unsigned)t < DX_SIM_N_TASKS ? task_names[t] : NULL;
}

int dx_sim_task_from_name(const char *name, dx_sim_task *out)
{
    if (!name || !out)
        return DX_EINVAL;
    for (unsigned i = 0; i < DX_SIM_N_TASKS; i++)
        if (strcmp(name, task_names[i]) == 0) {
            *out = (dx_sim_task)i;
            return DX_OK;
        }
    return DX_ENOENT;
}

const char *dx__sim_input_key(dx_sim_task t)
{
    return t == DX_SIM_CLASSIFY ? "text" : "question";
}

const char *dx__sim_output_key(dx_sim_task t)
{
    return t == DX_SIM_CLASSIFY ? "label" : "answer";
}

const char *const *dx__sim_task_keywords(dx_sim_task t)
{
    static const char *const kw[DX_SIM_N_TASKS][8] = {
        {"step", "calculat", "arithmetic", "math", "comput", "number", NULL},
        {"capital", "currenc", "country", "geograph", NULL},
        {"sentiment", "positive", "negative", "neutral", "tone", "classif",
         NULL},
        {"passage", "context", "birth", "born", "hop", NULL},
    };
    return (unsigned)t < DX_SIM_N_TASKS ? kw[t] : NULL;
}

/* ---- generation ------------------------------------------------------ */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t next(rng *r)
{
    r->s += 0x9e3779b97f4a7c15ull;
    return dx__sim_mix(r->s);
}

static size_t below(rng *r, size_t n)
{
    return (size_t)(next(r) % n);
}

static int split_index(const char *split)
{
    if (!split)
        return -1;
    if (strcmp(split, "train") == 0)
        return 0;
    if (strcmp(split, "dev") == 0)
        return 1;
    if (strcmp(split, "test") == 0)
        return 2;
    return -1;
}

/* Text with %N, %a, %b, %c replaced. */
static void fill_template(const char *t, const char *name, long a, long b,
                          long c, char *buf, size_t cap)
{
    size_t o = 0;
    for (const char *p = t; *p && o + 1 < cap; p++) {
        if (*p == '%' && p[1]) {
            char tmp[64];
            switch (p[1]) {
            case 'N':
                snprintf(tmp, sizeof tmp, "%s", name);
                break;
            case 'a':
                snprintf(tmp, sizeof tmp, "%ld", a);
                break;
            case 'b':
                snprintf(tmp, sizeof tmp, "%ld", b);
                break;
            case 'c':
                snprintf(tmp, sizeof tmp, "%ld", c);
                break;
            default:
                tmp[0] = p[1], tmp[1] = '\0';
                break;
            }
            p++;
            size_t k = strlen(tmp);
            if (k > cap - 1 - o)
                k = cap - 1 - o;
            memcpy(buf + o, tmp, k);
            o += k;
        } else {
            buf[o++] = *p;
        }
    }
    buf[o] = '\0';
}

/* One arithmetic or classify item from stream r. */
static void open_item(dx_sim_task t, rng *r, dx__sim_item *it)
{
    if (t == DX_SIM_ARITHMETIC) {
        const arith_template *at = &arith[below(r, COUNT(arith))];
        long a, b, c, v;
        do {
            a = 2 + (long)below(r, 11);
            b = 2 + (long)below(r, 9);
            c = 1 + (long)below(r, 9);
            v = apply(at->op2, apply(at->op1, a, b), c);
        } while (apply(at->op1, a, b) < 0 || v < 0);
        fill_template(at->text, first_names[below(r, N_FIRST)], a, b, c,
                      it->input, sizeof it->input);
        snprintf(it->answer, sizeof it->answer, "%ld", v);
    } else {
        size_t lab = below(r, 3);
        const char *const *w = lab == 0   ? pos_words
                               : lab == 1 ? neg_words
                                          : neu_words;
        const char *tmpl =
            classify_templates[below(r, COUNT(classify_templates))];
        const char *noun = nouns[below(r, COUNT(nouns))];
        const char *adj = w[below(r, 10)];
        /* the template is one of the fixed literals above */
        char fmt[96];
        snprintf(fmt, sizeof fmt, "%s", tmpl);
        size_t o = 0;
        const char *args[2] = {noun, adj};
        int ai = 0;
        for (const char *p = fmt; *p && o + 1 < sizeof it->input; p++) {
            if (p[0] == '%' && p[1] == 's' && ai < 2) {
                size_t k = strlen(args[ai]);
                memcpy(it->input + o, args[ai++], k);
                o += k;
                p++;
            } else {
                it->input[o++] = *p;
            }
        }
        it->input[o] = '\0';
        snprintf(it->answer, sizeof it->answer, "%s", labels[lab]);
    }
}

/* The members of split s (0..2) of a finite pool of n: a fixed
 * permutation (not the user's seed) cut into thirds, so the splits are the
 * same sets whatever the seed. Returns how many were written to mine. */
static size_t pool_members(size_t n, int s, size_t *mine)
{
    size_t perm[2 * N_COUNTRIES + N_PEOPLE];
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    rng r = {0x5eedull};
    for (size_t i = n; i > 1; i--) {
        size_t j = below(&r, i), tmp = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = tmp;
    }
    size_t lo = (size_t)s * n / 3, hi = (size_t)(s + 1) * n / 3;
    memcpy(mine, perm + lo, (hi - lo) * sizeof *mine);
    return hi - lo;
}

static void pool_item(dx_sim_task t, size_t i, dx__sim_item *it)
{
    if (t == DX_SIM_CAPITALS) {
        const country *c = &countries[i / 2];
        if (i % 2 == 0) {
            snprintf(it->input, sizeof it->input, "What is the capital of %s?",
                     c->name);
            snprintf(it->answer, sizeof it->answer, "%s", c->capital);
        } else {
            snprintf(it->input, sizeof it->input, "What is the currency of %s?",
                     c->name);
            snprintf(it->answer, sizeof it->answer, "%s", c->currency);
        }
    } else {
        char name[64];
        person_name(i, name, sizeof name);
        snprintf(it->input, sizeof it->input, "In which country was %s born?",
                 name);
        snprintf(it->answer, sizeof it->answer, "%s",
                 cities[person_city(i)].country);
    }
}

/* Pool members per split are capped so every split has the same size. */
#define POOL_PER_SPLIT 60

int dx__sim_generate_items(dx_sim_task t, const char *split, uint64_t seed,
                           size_t n, dx__sim_item **out)
{
    int s = split_index(split);
    if (!out || s < 0 || (unsigned)t >= DX_SIM_N_TASKS)
        return DX_EINVAL;
    *out = NULL;
    bool pooled = t == DX_SIM_CAPITALS || t == DX_SIM_TWOHOP;
    if (pooled && n > POOL_PER_SPLIT)
        return DX_EINVAL;
    dx__sim_item *items = dx_calloc(n ? n : 1, sizeof *items);
    if (!items)
        return DX_ENOMEM;
    if (pooled) {
        size_t pool_n = t == DX_SIM_CAPITALS ? 2 * N_COUNTRIES : N_PEOPLE;
        size_t mine[2 * N_COUNTRIES + N_PEOPLE];
        size_t m = pool_members(pool_n, s, mine);
        if (m > POOL_PER_SPLIT)
            m = POOL_PER_SPLIT;
        /* the seed orders the split's members (Fisher-Yates) */
        rng r = {dx__sim_mix(seed ^ ((uint64_t)t << 8))};
        for (size_t i = m; i > 1; i--) {
            size_t j = below(&r, i);
            size_t tmp = mine[i - 1];
            mine[i - 1] = mine[j];
            mine[j] = tmp;
        }
        if (n > m) {
            dx_free(items);
            return DX_EINVAL;
        }
        for (size_t i = 0; i < n; i++)
            pool_item(t, mine[i], &items[i]);
    } else {
        rng r = {dx__sim_mix(seed ^ ((uint64_t)t << 8) ^ ((uint64_t)s << 16))};
        size_t got = 0, tries = 0;
        while (got < n) {
            if (++tries > 100 * (n + 10)) {
                dx_free(items);
                return DX_EINVAL; /* the family has no more distinct texts */
            }
            dx__sim_item it;
            open_item(t, &r, &it);
            /* A text belongs to the split its hash names (keeps splits
             * disjoint for one seed), and appears once in it. */
            if ((int)(dx__sim_hash_str(seed, it.input) % 3) != s)
                continue;
            bool dup = false;
            for (size_t k = 0; k < got && !dup; k++)
                dup = strcmp(items[k].input, it.input) == 0;
            if (!dup)
                items[got++] = it;
        }
    }
    *out = items;
    return DX_OK;
}

/* ---- JSONL ----------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
    bool oom;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *np = dx_realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* A JSON string as cJSON prints it (the texts are ASCII without control
 * characters, but escape them anyway). */
static void put_json_str(buf *b, const char *s)
{
    put(b, "\"", 1);
    for (; *s; s++) {
        char e[8];
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            e[0] = '\\', e[1] = (char)c;
            put(b, e, 2);
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
            put(b, e, 6);
        } else {
            put(b, s, 1);
        }
    }
    put(b, "\"", 1);
}

int dx__sim_jsonl(dx_sim_task t, const dx__sim_item *items, size_t n,
                  char **out, size_t *len)
{
    buf b = {0};
    put(&b, "", 0);
    for (size_t i = 0; i < n; i++) {
        put(&b, "{", 1);
        put_json_str(&b, dx__sim_input_key(t));
        put(&b, ":", 1);
        put_json_str(&b, items[i].input);
        put(&b, ",", 1);
        put_json_str(&b, dx__sim_output_key(t));
        put(&b, ":", 1);
        put_json_str(&b, items[i].answer);
        put(&b, "}\n", 2);
    }
    if (b.oom) {
        dx_free(b.p);
        return DX_ENOMEM;
    }
    *out = b.p;
    if (len)
        *len = b.len;
    return DX_OK;
}

/* ---- recognising and solving ----------------------------------------- */

/* Match template t against text at p. Captures the first %N and the three
 * numbers; returns the length matched or 0. */
static size_t match_at(const char *t, const char *p, char *name, size_t ncap,
                       long v[3])
{
    const char *s = p;
    bool have_name = false;
    for (; *t; t++) {
        if (*t == '%' && t[1] == 'N') {
            size_t k = 0;
            while (isalpha((unsigned char)s[k]))
                k++;
            if (k == 0 || !isupper((unsigned char)s[0]))
                return 0;
            if (!have_name) {
                snprintf(name, ncap, "%.*s", (int)k, s);
                have_name = true;
            }
            s += k;
            t++;
        } else if (*t == '%' && (t[1] == 'a' || t[1] == 'b' || t[1] == 'c')) {
            if (!isdigit((unsigned char)*s))
                return 0;
            long x = 0;
            int digits = 0;
            while (isdigit((unsigned char)*s) && digits < 6)
                x = x * 10 + (*s++ - '0'), digits++;
            v[t[1] - 'a'] = x;
            t++;
        } else if (*s++ != *t) {
            return 0;
        }
    }
    return (size_t)(s - p);
}

static bool solve_arith(const char *text, uint64_t h, dx__sim_solution *o)
{
    for (size_t k = 0; k < COUNT(arith); k++) {
        for (const char *p = text; *p; p++) {
            char name[32];
            long v[3];
            size_t ml = match_at(arith[k].text, p, name, sizeof name, v);
            if (!ml)
                continue;
            snprintf(o->key, sizeof o->key, "%.*s", (int)ml, p);
            long r1 = apply(arith[k].op1, v[0], v[1]);
            long ans = apply(arith[k].op2, r1, v[2]);
            /* off by one, or one of the steps done with the wrong sign */
            long wrong;
            switch (h % 3) {
            case 0:
                wrong = ans + 1;
                break;
            case 1:
                wrong = ans > 0 ? ans - 1 : ans + 2;
                break;
            default:
                wrong = arith[k].op2 == '-' ? r1 + v[2]
                        : arith[k].op2 == '+'
                            ? (r1 > v[2] ? r1 - v[2] : r1 + v[2] + 1)
                            : ans + 1;
                break;
            }
            if (wrong == ans)
                wrong = ans + 1;
            o->task = DX_SIM_ARITHMETIC;
            snprintf(o->answer, sizeof o->answer, "%ld", ans);
            snprintf(o->wrong, sizeof o->wrong, "%ld", wrong);
            snprintf(o->steps, sizeof o->steps,
                     "First, %ld %c %ld = %ld. Then, %ld %c %ld = %ld. So the "
                     "answer is %ld.",
                     v[0], arith[k].op1, v[1], r1, r1, arith[k].op2, v[2], ans,
                     ans);
            snprintf(o->wrong_steps, sizeof o->wrong_steps,
                     "First, %ld %c %ld = %ld. Then, %ld %c %ld = %ld. So the "
                     "answer is %ld.",
                     v[0], arith[k].op1, v[1], r1, r1, arith[k].op2, v[2],
                     wrong, wrong);
            return true;
        }
    }
    return false;
}

/* "<prefix><Country>?" with a country of the table. */
static int find_country_after(const char *text, const char *prefix)
{
    size_t pl = strlen(prefix);
    for (const char *p = strstr(text, prefix); p; p = strstr(p + 1, prefix)) {
        const char *q = p + pl;
        for (size_t i = 0; i < N_COUNTRIES; i++) {
            size_t nl = strlen(countries[i].name);
            if (strncmp(q, countries[i].name, nl) == 0 && q[nl] == '?')
                return (int)i;
        }
    }
    return -1;
}

static bool solve_capitals(const char *text, uint64_t h, dx__sim_solution *o)
{
    bool cur = false;
    int c = find_country_after(text, "What is the capital of ");
    if (c < 0) {
        c = find_country_after(text, "What is the currency of ");
        cur = c >= 0;
    }
    if (c < 0)
        return false;
    o->task = DX_SIM_CAPITALS;
    const country *x = &countries[c];
    snprintf(o->key, sizeof o->key, "%s of %s", cur ? "currency" : "capital",
             x->name);
    snprintf(o->answer, sizeof o->answer, "%s", cur ? x->currency : x->capital);
    /* a neighbour in the table, with a different answer */
    size_t j = (size_t)c;
    for (size_t step = 1 + h % 3; step < N_COUNTRIES; step++) {
        j = ((size_t)c + step) % N_COUNTRIES;
        const char *w = cur ? countries[j].currency : countries[j].capital;
        if (strcmp(w, o->answer) != 0)
            break;
    }
    snprintf(o->wrong, sizeof o->wrong, "%s",
             cur ? countries[j].currency : countries[j].capital);
    snprintf(o->steps, sizeof o->steps,
             "The question asks for the %s of %s, "
             "which is %s.",
             cur ? "currency" : "capital", x->name, o->answer);
    snprintf(o->wrong_steps, sizeof o->wrong_steps,
             "The question asks for "
             "the %s of %s, which is %s.",
             cur ? "currency" : "capital", x->name, o->wrong);
    return true;
}

/* The polarity word of a sentence, if any: the label with the most hits. */
static bool solve_classify(const char *text, uint64_t h, dx__sim_solution *o)
{
    int hits[3] = {0, 0, 0};
    const char *const *lists[3] = {pos_words, neg_words, neu_words};
    for (const char *p = text; *p;) {
        while (*p && !isalpha((unsigned char)*p))
            p++;
        const char *w = p;
        while (isalpha((unsigned char)*p))
            p++;
        size_t wl = (size_t)(p - w);
        for (int l = 0; l < 3 && wl; l++)
            for (size_t i = 0; i < 10; i++)
                if (strlen(lists[l][i]) == wl &&
                    strncmp(lists[l][i], w, wl) == 0)
                    hits[l]++;
    }
    int best = hits[0] >= hits[1] ? 0 : 1;
    if (hits[2] > hits[best])
        best = 2;
    if (hits[best] == 0)
        return false;
    o->task = DX_SIM_CLASSIFY;
    snprintf(o->key, sizeof o->key, "%s", text);
    snprintf(o->answer, sizeof o->answer, "%s", labels[best]);
    int wl = (best + 1 + (int)(h % 2)) % 3;
    snprintf(o->wrong, sizeof o->wrong, "%s", labels[wl]);
    snprintf(o->steps, sizeof o->steps,
             "The text uses %s words, so the "
             "sentiment is %s.",
             labels[best], labels[best]);
    snprintf(o->wrong_steps, sizeof o->wrong_steps,
             "The wording reads as %s "
             "overall, so the sentiment is %s.",
             labels[wl], labels[wl]);
    return true;
}

static bool solve_twohop(const char *text, uint64_t h, dx__sim_solution *o)
{
    static const char pre[] = "In which country was ";
    for (const char *p = strstr(text, pre); p; p = strstr(p + 1, pre)) {
        const char *q = p + sizeof pre - 1;
        for (size_t i = 0; i < N_PEOPLE; i++) {
            char name[64];
            person_name(i, name, sizeof name);
            size_t nl = strlen(name);
            if (strncmp(q, name, nl) != 0 || strncmp(q + nl, " born?", 6) != 0)
                continue;
            const city *c = &cities[person_city(i)];
            char f1[128], f2[128];
            snprintf(f1, sizeof f1, "%s was born in %s", name, c->name);
            snprintf(f2, sizeof f2, "%s is a city in %s", c->name, c->country);
            o->task = DX_SIM_TWOHOP;
            snprintf(o->key, sizeof o->key, "born %s", name);
            o->support =
                (strstr(text, f1) != NULL) + (strstr(text, f2) != NULL);
            snprintf(o->answer, sizeof o->answer, "%s", c->country);
            /* knowing the city but not its country, the classic slip is
             * to answer with the city */
            if (strstr(text, f1) && !strstr(text, f2) && h % 2 == 0) {
                snprintf(o->wrong, sizeof o->wrong, "%s", c->name);
            } else {
                int ci = country_index(c->country);
                size_t j =
                    ((size_t)(ci < 0 ? 0 : ci) + 1 + h % 5) % N_COUNTRIES;
                snprintf(o->wrong, sizeof o->wrong, "%s", countries[j].name);
            }
            snprintf(o->steps, sizeof o->steps,
                     "%s was born in %s. %s is a "
                     "city in %s. So the answer is %s.",
                     name, c->name, c->name, c->country, c->country);
            snprintf(o->wrong_steps, sizeof o->wrong_steps,
                     "%s was probably "
                     "born in or near %s. So the answer is %s.",
                     name, o->wrong, o->wrong);
            return true;
        }
    }
    return false;
}

bool dx__sim_twohop_person(const char *text, char *name, size_t cap)
{
    static const char pre[] = "In which country was ";
    for (const char *p = text ? strstr(text, pre) : NULL; p;
         p = strstr(p + 1, pre)) {
        const char *q = p + sizeof pre - 1;
        for (size_t i = 0; i < N_PEOPLE; i++) {
            char nm[64];
            person_name(i, nm, sizeof nm);
            size_t nl = strlen(nm);
            if (strncmp(q, nm, nl) == 0 && strncmp(q + nl, " born?", 6) == 0) {
                snprintf(name, cap, "%s", nm);
                return true;
            }
        }
    }
    return false;
}

bool dx__sim_solve(const char *text, uint64_t h, dx__sim_solution *out)
{
    memset(out, 0, sizeof *out);
    if (!text)
        return false;
    /* The most specific patterns first: a twohop prompt's passages would
     * otherwise look like nothing else, but classify matches any sentence
     * with a sentiment word. */
    return solve_twohop(text, h, out) || solve_capitals(text, h, out) ||
           solve_arith(text, h, out) || solve_classify(text, h, out);
}

/* ---- corpus ---------------------------------------------------------- */

#define N_PASSAGES (N_PEOPLE + N_CITIES)

static void passage(size_t i, char *b, size_t cap)
{
    if (i < N_PEOPLE) {
        char name[64];
        person_name(i, name, sizeof name);
        snprintf(b, cap, "%s was born in %s. %s works as %s.", name,
                 cities[person_city(i)].name, first_names[i % N_FIRST],
                 professions[(i * 7) % COUNT(professions)]);
    } else {
        const city *c = &cities[i - N_PEOPLE];
        snprintf(b, cap,
                 "%s is a city in %s. %s is known for its old "
                 "harbour district and markets.",
                 c->name, c->country, c->name);
    }
}

/* Lower-cased words of 3+ letters of q, at most 32 of them. */
static size_t query_words(const char *q, char w[][32], size_t max)
{
    size_t n = 0;
    while (*q && n < max) {
        while (*q && !isalnum((unsigned char)*q))
            q++;
        size_t k = 0;
        while (isalnum((unsigned char)*q)) {
            if (k < 31)
                w[n][k++] = (char)tolower((unsigned char)*q);
            q++;
        }
        w[n][k] = '\0';
        if (k >= 3)
            n++;
    }
    return n;
}

/* How often the lower-case word w occurs in text (any case). */
static int count_word(const char *text, const char *w)
{
    size_t wl = strlen(w);
    int n = 0;
    for (const char *p = text; *p;) {
        while (*p && !isalnum((unsigned char)*p))
            p++;
        const char *s = p;
        while (isalnum((unsigned char)*p))
            p++;
        if ((size_t)(p - s) == wl) {
            size_t i = 0;
            while (i < wl && tolower((unsigned char)s[i]) == w[i])
                i++;
            n += i == wl;
        }
    }
    return n;
}

void dx_sim_corpus_free(char **passages, size_t n)
{
    if (!passages)
        return;
    for (size_t i = 0; i < n; i++)
        dx_free(passages[i]);
    dx_free(passages);
}

int dx_sim_corpus(const char *query, size_t k, char ***out, size_t *n)
{
    if (!out || !n)
        return DX_EINVAL;
    *out = NULL;
    *n = 0;
    size_t order[N_PASSAGES];
    int score[N_PASSAGES];
    size_t m = 0;
    char words[32][32];
    size_t nw = query ? query_words(query, words, 32) : 0;
    for (size_t i = 0; i < N_PASSAGES; i++) {
        char p[256];
        passage(i, p, sizeof p);
        int s = 0;
        for (size_t w = 0; w < nw; w++)
            s += count_word(p, words[w]);
        if (query && s == 0)
            continue;
        /* insertion by score, stable for equal scores */
        size_t at = m;
        while (at > 0 && score[at - 1] < s) {
            order[at] = order[at - 1];
            score[at] = score[at - 1];
            at--;
        }
        order[at] = i;
        score[at] = s;
        m++;
    }
    if (k && m > k)
        m = k;
    if (m == 0)
        return DX_OK;
    char **r = dx_calloc(m, sizeof *r);
    if (!r)
        return DX_ENOMEM;
    for (size_t i = 0; i < m; i++) {
        char p[256];
        passage(order[i], p, sizeof p);
        if (!(r[i] = dx_strdup(p))) {
            dx_sim_corpus_free(r, i);
            return DX_ENOMEM;
        }
    }
    *out = r;
    *n = m;
    return DX_OK;
}
