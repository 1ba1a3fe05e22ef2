"""The standing security suite: each test here was written against a hole an adversarial review
found (issue 11) and fails if that hole opens again."""
