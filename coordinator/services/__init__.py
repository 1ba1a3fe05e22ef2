"""Business rules of the coordinator, as plain functions over a store transaction ``tx``.

The store methods call them inside their write (or read) transaction; they take the clock's
``now`` as an argument and never render API views or raise HTTP errors.
"""
