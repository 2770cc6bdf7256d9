"""tessy: teacher-student cooperation data synthesis (TESSY, arXiv 2604.14164).

The student writes the style tokens, the teacher writes the capability tokens, and boundary
predictors decide where each span ends (paper, section 2.2 and Algorithm 1).
"""

__version__ = "0.1.0"
