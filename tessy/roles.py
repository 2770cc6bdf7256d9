"""The two roles of the cooperative loop (paper, section 2): the student writes the style tokens and
the final answer, the teacher the capability tokens."""

STUDENT, TEACHER = "student", "teacher"
ROLES = (STUDENT, TEACHER)


def other(role: str) -> str:
    return TEACHER if role == STUDENT else STUDENT
