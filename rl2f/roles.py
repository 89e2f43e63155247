"""Who a token of a dialogue belongs to: the one encoding the episode records, the loss masks
and the trainer share (stored as plain ints in episode JSONL)."""
from enum import IntEnum


class Role(IntEnum):
    TEMPLATE = 0  # the prompt, the problem, chat-template tokens: never trained
    STUDENT = 1  # sampled by the student: carries the RL / SFT loss
    TEACHER = 2  # the teacher's message: carries the optional critique-prediction loss
