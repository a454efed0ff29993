"""effarch's intermediate representation: values, nodes, graphs, text form, verifier, the operator set
(``ops``), graph statistics (``stats``) and the constant evaluator (``consteval``).

``to_networkx`` lives in ``compiler.ir.nxview`` (also ``Graph.to_networkx()``) so that importing
the IR does not import networkx.
"""

from compiler.ir.core import AttrValue, Node, Provenance, Value
from compiler.ir.graph import Graph
from compiler.ir.parser import ParseError, parse_graph
from compiler.ir.printer import print_graph
from compiler.ir.types import DType, TensorType
from compiler.ir.verifier import VerifyError, verify

__all__ = [
    "AttrValue", "DType", "Graph", "Node", "ParseError", "Provenance", "TensorType", "Value",
    "VerifyError", "parse_graph", "print_graph", "verify",
]
