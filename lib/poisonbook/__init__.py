"""poisonbook: the library behind the book *Data poisoning and robust training data, reproduced*.

Rooms (imports flow downwards only):

* ground floor: :mod:`~poisonbook.data`, :mod:`~poisonbook.models`
* above them: :mod:`~poisonbook.train`, :mod:`~poisonbook.augment`, :mod:`~poisonbook.attacks`
* algorithms: :mod:`~poisonbook.condense`, :mod:`~poisonbook.poison`, :mod:`~poisonbook.defend`
* apart: :mod:`~poisonbook.theory` (numpy/scipy/torch only)
* bookkeeping: :mod:`~poisonbook.profiles`, :mod:`~poisonbook.results`, :mod:`~poisonbook.cache`,
  :mod:`~poisonbook.plotting`
"""

__version__ = "0.1.0"
