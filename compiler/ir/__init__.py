"""effarch's intermediate representation: values, nodes, graphs, text form, verifier."""

from compiler.ir.core import AttrValue, Node, Provenance, Value
from compiler.ir.graph import Graph
from compiler.ir.types import DType, TensorType

__all__ = ["AttrValue", "DType", "Graph", "Node", "Provenance", "TensorType", "Value"]
