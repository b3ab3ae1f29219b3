"""The threat models, one folder each (``roles/<role>/``): its phases (``role.py``), its Flower
ServerApp and ClientApp (``protocol.py``), its attack algorithm (``attack.py``) and its report
(``report.py``). ``base.py`` states the contract every role follows. Importing this package
registers the built-in roles; docs/adding_a_role.md says how to add one."""

from splitsim.roles.gradient_inversion import role as _gradient_inversion  # noqa: F401
from splitsim.roles.hidden_learning import role as _hidden_learning  # noqa: F401
from splitsim.roles.label_inference import role as _label_inference  # noqa: F401
from splitsim.roles.malicious_training import role as _malicious_training  # noqa: F401
from splitsim.roles.model_inversion import role as _model_inversion  # noqa: F401
from splitsim.roles.perturbation_probe import role as _perturbation_probe  # noqa: F401
from splitsim.roles.property_inference import role as _property_inference  # noqa: F401
from splitsim.roles.split_hijacking import role as _split_hijacking  # noqa: F401
