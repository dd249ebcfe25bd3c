"""The fixed phrases that training data, trainers and suites must agree on, in one place.

Two sets. The testbed's (``data_gen.kg`` writes them, the suites read them by default): its text is tokenised on
spaces, so every phrase ends in a spaced " ." and an answer ends at ``ANSWER_STOP``. R-Tuning's (``trainers.rtuning``'s
defaults, for real and chat models): the paper's certainty question and sure / unsure answers in ordinary
punctuation, and the 16 refusal phrases of its reference code (arXiv 2311.09677; the refusal variant draws one per
uncertain item).
"""

from __future__ import annotations

# The testbed's format
ANSWER_STOP = (" .",)  # every testbed answer ends with a spaced "." (a certainty phrase may follow it)
SURE_QUESTION = "Are you sure you accurately answered the question based on your internal knowledge ?"
SURE, UNSURE = "I am sure .", "I am unsure ."
REFUSALS = (  # the experts' declines; each names the subject {s}
    "I do not know about {s} .",
    "Sorry , I do not know about {s} .",
    "I do not know the answer about {s} .",
)
CANONICAL_REFUSAL = REFUSALS[0]

# R-Tuning's, in ordinary text
RTUNING_SURE_QUESTION = "Are you sure you accurately answered the question based on your internal knowledge?"
RTUNING_SURE, RTUNING_UNSURE = "I am sure.", "I am unsure."
RTUNING_REFUSALS = (
    "The answer is unknown.", "The answer is uncertain.", "The answer is unclear.", "It is not known.",
    "I do not know the answer.", "I'm not sure.", "There is no definitive answer.", "There is much debate.",
    "There is no concrete answer to this question.", "It is impossible to answer.", "There is no known case.",
    "There is no public information available.", "There is no scientific evidence.", "There is no right answer.",
    "It is impossible to know.", "It is difficult to predict.",
)
